// hpack.js has no types of its own: what http2-filter.ts uses of it.
declare module "hpack.js" {
  interface Decompressor {
    write(b: Buffer): void;
    execute(): void;
    read(): { name: string; value: string; neverIndex: boolean } | null;
  }
  interface Compressor {
    write(headers: { name: string; value: string; neverIndex?: boolean }[]): void;
    read(): Buffer;
  }
  const hpack: {
    decompressor: { create(o: { table: { size: number } }): Decompressor };
    compressor: { create(o: { table: { size: number } }): Compressor };
  };
  export default hpack;
}
