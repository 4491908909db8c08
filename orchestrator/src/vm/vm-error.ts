// vm-error.ts — the error a VM sandbox reports when its image cannot be built or its guest cannot
// start or run a command. Missing host tools are HostRequirementError (ERR_MISSING_TOOL) instead.
import { MoatError } from "../errors.js";

export class VmError extends MoatError {
  constructor(message: string, hint?: string, options?: { cause?: unknown }) {
    super("ERR_VM", message, hint, options);
    this.name = "VmError";
  }
}
