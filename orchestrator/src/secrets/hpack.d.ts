// hpack.js has no types of its own: what http2-filter.ts uses of it.
declare module "hpack.js" {
  interface Decompressor {
    write(b: Buffer): void;
    execute(): void;
    read(): { name: string; value: string; neverIndex: boolean } | null;
    /** The table's current size; size updates in blocks may raise it up to the table's maxSize. */
    updateTableSize(n: number): void;
  }
  interface Compressor {
    write(headers: { name: string; value: string; neverIndex?: boolean }[]): void;
    read(): Buffer;
  }
  const hpack: {
    /** (hpack.js reads `maxSize`; a `size` it ignores: the table would then never evict.) */
    decompressor: { create(o: { table: { size?: number; maxSize?: number } }): Decompressor };
    compressor: { create(o: { table: { size: number } }): Compressor };
  };
  export default hpack;
}
