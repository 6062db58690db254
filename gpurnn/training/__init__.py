"""What a training loop for recurrent networks needs beyond the cells, one module each:

- loss.py: the sequence loss, L = sum over steps (and rows) of -log softmax(W h_t + b)[y_t]
  (or the mean), on xp arrays (`sequence_loss_forward/backward`) and as a
  differentiable torch function (`sequence_loss`) that runs the NumPy/CuPy
  engine or the fused Triton kernel (kernels/loss.py);
- bptt.py: truncated BPTT over long sequences or endless streams (`truncated_bptt`);
- clipping.py: clipping by global norm with torch's convention (`clip_grad_norm_`).
"""
from .bptt import ChunkResult, detach_state, split_chunks, truncated_bptt
from .clipping import clip_grad_norm_
from .loss import REDUCTIONS, sequence_loss, sequence_loss_backward, sequence_loss_forward

__all__ = ["ChunkResult", "REDUCTIONS", "clip_grad_norm_", "detach_state", "sequence_loss", "sequence_loss_backward",
           "sequence_loss_forward", "split_chunks", "truncated_bptt"]
