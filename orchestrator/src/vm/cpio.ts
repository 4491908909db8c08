// cpio.ts — writes an initramfs: a "newc" (SVR4, no CRC) cpio archive, the format the Linux kernel
// unpacks into its rootfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//
// Each entry is a 110-byte ASCII header ("070701" and thirteen 8-digit hex fields), the path
// (NUL-terminated, padded to 4 bytes), then the data (padded to 4 bytes); the archive ends with
// the entry "TRAILER!!!". Owners are root, times are 0 and inode numbers count up, so the same
// entries always give the same bytes. Parents must come before their children: add directories
// first.

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

export class CpioWriter {
  private readonly parts: Buffer[] = [];
  private ino = 1;

  dir(path: string, mode = 0o755): this {
    return this.entry(path, S_IFDIR | mode, Buffer.alloc(0), 2);
  }

  file(path: string, data: Buffer, mode = 0o644): this {
    return this.entry(path, S_IFREG | mode, data);
  }

  symlink(path: string, target: string): this {
    return this.entry(path, S_IFLNK | 0o777, Buffer.from(target));
  }

  charDevice(path: string, major: number, minor: number, mode = 0o600): this {
    return this.entry(path, S_IFCHR | mode, Buffer.alloc(0), 1, major, minor);
  }

  /** The archive, with its trailer. */
  finish(): Buffer {
    this.entry("TRAILER!!!", 0, Buffer.alloc(0), 1, 0, 0, 0);
    return Buffer.concat(this.parts);
  }

  private entry(path: string, mode: number, data: Buffer, nlink = 1, rdevMajor = 0, rdevMinor = 0, ino = this.ino++): this {
    const name = Buffer.from(path.replace(/^\/+/, "") + "\0");
    const fields = [ino, mode, 0, 0, nlink, 0, data.length, 0, 0, rdevMajor, rdevMinor, name.length, 0];
    const header = Buffer.from("070701" + fields.map((f) => f.toString(16).padStart(8, "0")).join(""), "ascii");
    this.parts.push(header, name, pad4(header.length + name.length), data, pad4(data.length));
    return this;
  }
}

function pad4(n: number): Buffer {
  return Buffer.alloc((4 - (n % 4)) % 4);
}
