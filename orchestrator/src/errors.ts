// errors.ts — every error moat reports to a user or an embedder: a typed Error with a stable code,
// a message that says what was wrong and where, and (where there is one) what to do about it.

export type MoatErrorCode =
  | "ERR_NOT_ROOT"
  | "ERR_NO_TUN"
  | "ERR_NO_USERNS"
  | "ERR_MISSING_TOOL"
  | "ERR_BAD_ARGUMENT"
  | "ERR_BAD_CONFIG"
  | "ERR_NETNS"
  | "ERR_LINK"
  | "ERR_ENGINE"
  | "ERR_ADDRESS_POOL"
  | "ERR_PORT"
  | "ERR_VM"
  | "ERR_NAME_IN_USE"
  | "ERR_COMMAND_NOT_FOUND"
  | "ERR_COMMAND_NOT_EXECUTABLE";

export class MoatError extends Error {
  readonly code: MoatErrorCode;
  readonly hint: string | undefined;
  constructor(code: MoatErrorCode, message: string, hint?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "MoatError";
    this.code = code;
    this.hint = hint;
  }
}

/** A command-line or configuration value that is not acceptable. */
export class ConfigError extends MoatError {
  constructor(message: string, hint?: string) {
    super("ERR_BAD_CONFIG", message, hint);
    this.name = "ConfigError";
  }
}

/** The host lacks something moat needs (root, /dev/net/tun, user namespaces, iproute2). */
export class HostRequirementError extends MoatError {
  constructor(code: "ERR_NOT_ROOT" | "ERR_NO_TUN" | "ERR_NO_USERNS" | "ERR_MISSING_TOOL", message: string, hint: string) {
    super(code, message, hint);
    this.name = "HostRequirementError";
  }
}

/** The command to run in a sandbox cannot be: `status` is what a shell (and docker) exits with for it. */
export class CommandError extends MoatError {
  readonly status: 126 | 127;
  constructor(code: "ERR_COMMAND_NOT_FOUND" | "ERR_COMMAND_NOT_EXECUTABLE", message: string, hint: string) {
    super(code, message, hint);
    this.name = "CommandError";
    this.status = code === "ERR_COMMAND_NOT_FOUND" ? 127 : 126;
  }
}
