// host-checks.ts — what a netns sandbox needs from the host, checked up front so a newcomer gets
// one clear sentence instead of a stack trace from deep inside.
import { accessSync, constants, existsSync, statSync } from "node:fs";
import { delimiter, join } from "node:path";
import { CommandError, HostRequirementError } from "../errors.js";

/** Where `tool` is in `path` (default: this process's PATH), or in /usr/sbin or /sbin. */
export function findInPath(tool: string, path = process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin"): string | undefined {
  for (const dir of path.split(delimiter).concat(["/usr/sbin", "/sbin"])) {
    const p = join(dir, tool);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

/** Throws HostRequirementError for the first missing requirement. Returns the path of `ip`. */
export function checkNetnsHost(): string {
  if (process.platform !== "linux") {
    throw new HostRequirementError("ERR_MISSING_TOOL", `moat needs Linux (this is ${process.platform})`,
      "run moat on a Linux host or VM");
  }
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    throw new HostRequirementError("ERR_NOT_ROOT", "creating a namespace sandbox from a program needs root (network namespaces and TAP devices)",
      "run it as root; `moat run` itself also works as an ordinary user (it runs in a user namespace of yours)");
  }
  if (!existsSync("/dev/net/tun")) {
    throw new HostRequirementError("ERR_NO_TUN", "/dev/net/tun does not exist",
      "load the tun module (`modprobe tun`); in a container, pass the device (--device /dev/net/tun)");
  }
  const ip = findInPath("ip");
  if (!ip) {
    throw new HostRequirementError("ERR_MISSING_TOOL", "the `ip` command (iproute2) was not found in PATH",
      "install it: `apt-get install iproute2` (Debian/Ubuntu) or `dnf install iproute`");
  }
  return ip;
}

/**
 * Where `exe` is (looked up in `path` when it has no slash, as execvp does), or a CommandError:
 * not found (127) or not executable (126: no permission, a directory).
 */
export function resolveCommand(exe: string, path = process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin", cwd = process.cwd()): string {
  const candidates = exe.includes("/") ? [exe.startsWith("/") ? exe : join(cwd, exe)] : path.split(delimiter).map((d) => join(d || ".", exe));
  let unusable: string | undefined;
  for (const c of candidates) {
    let st;
    try {
      st = statSync(c);
    } catch {
      continue;
    }
    try {
      if (!st.isDirectory()) {
        accessSync(c, constants.X_OK);
        return c;
      }
    } catch {
      // not executable
    }
    unusable ??= c;
  }
  if (unusable) throw new CommandError("ERR_COMMAND_NOT_EXECUTABLE", `cannot run ${exe}: ${unusable} is ${statSync(unusable).isDirectory() ? "a directory" : "not executable"}`, "give a program with execute permission");
  throw new CommandError("ERR_COMMAND_NOT_FOUND", `command not found: ${exe}`, exe.includes("/") ? "check the path" : "check the spelling, or give its full path");
}
