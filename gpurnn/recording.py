"""Whether a layer call is being recorded (torch.jit.trace, torch.export) or transformed (torch.func, forward-mode
AD): the modules and run_layers then run torch ops, not the engine's custom op (see each function)."""
import torch
from torch._subclasses.fake_tensor import is_fake


def recorded_for_torch(x):
    """Whether this call is being recorded into a program that may run where gpurnn is absent, with torch's own
    ops only: torch.jit.trace (TorchScript, as libtorch loads it, and the TorchScript ONNX exporter) and
    torch.export (AOTInductor, ExecuTorch and a process without gpurnn load its programs; the dynamo ONNX exporter
    uses it). Layers then run as torch ops (torch.nn's modules: their own forward, as under torch.jit.script; the
    rest: the torch loop), so the program is torch.nn's; torch.compile records the engine's custom op."""
    if torch.jit.is_tracing():   # this thread's trace
        return True
    # torch.export's flag is process-wide: the input (x) must also be one it traces, fake, or dynamo must be tracing
    # this code (a strict export; dynamo cannot call is_fake). The flag is read, not torch.compiler.is_exporting():
    # torch 2.11's dynamo folds that call to True under every torch.compile.
    exporting = getattr(torch.compiler, "_is_exporting_flag", False)
    return exporting and (torch.compiler.is_dynamo_compiling() or is_fake(x))


def transformed():
    """Whether a torch.func transform (grad, jvp, vmap, ...) or forward-mode AD is active (a dual level, dual
    tensors or not). Asked in plain Python also while dynamo traces (below): dynamo traces a transform's body with
    the transform's real interpreter level set, and there a traced custom op would meet its wrapped tensors
    (torch.compile of torch.func.grad failed; of jvp, gave a zero tangent). Not covered: a model compiled outside
    forward-mode AD and then called inside a dual level (dynamo does not guard on it; the custom op has no jvp)."""
    return (torch._C._functorch.maybe_current_level() is not None
            or torch.autograd.forward_ad._current_level >= 0)


# torch.compiler.assume_constant_result(transformed), without importing dynamo (seconds) with gpurnn
transformed._dynamo_marked_constant = True


def without_storage(t):
    """Whether t has no data to read: a torch.func transform's wrapped tensor or a fake tensor, as functional_call
    inside a transform or a fake trace (make_fx) leaves in a module's weights (its _flat_weights)."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t) or is_fake(t)
