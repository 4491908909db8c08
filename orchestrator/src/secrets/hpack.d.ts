// hpack.js has no types of its own: what http2-filter.ts uses of it.
declare module "hpack.js" {
  interface Decompressor {
    write(b: Buffer): void;
    execute(): void;
    read(): { name: string; value: string; neverIndex: boolean } | null;
  }
  const hpack: { decompressor: { create(o: { table: { size: number } }): Decompressor } };
  export default hpack;
}
