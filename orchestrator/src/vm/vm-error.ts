// vm-error.ts — the error a VM sandbox reports when its image cannot be built or its guest cannot
// start or run a command. Missing host tools are HostRequirementError (ERR_MISSING_TOOL) instead.
import { MoatError, type MoatErrorCode } from "../errors.js";

// "ERR_VM" belongs in errors.ts's MoatErrorCode; until it is there, it is named here once.
const ERR_VM = "ERR_VM" as MoatErrorCode;

export class VmError extends MoatError {
  constructor(message: string, hint?: string, options?: { cause?: unknown }) {
    super(ERR_VM, message, hint, options);
    this.name = "VmError";
  }
}
