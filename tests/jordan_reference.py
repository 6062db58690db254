"""Jordan network written plainly in torch from DESIGN.md's equations: the independent reference."""
import torch

ACTIVATIONS = {"identity": lambda a: a, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
               "softmax": lambda a: torch.softmax(a, -1)}


def jordan_reference(x, s0, w_ih, w_sh, b_h, w_ho, b_o, decay, nonlinearity="tanh",
                     output_activation="identity", teacher=None):
    """x (T, B, I), s0 (B, O) -> (y (T, B, O), s_{T+1})."""
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu
    g = ACTIVATIONS[output_activation]
    s, ys = s0, []
    for t in range(x.shape[0]):
        h = phi(x[t] @ w_ih.T + s @ w_sh.T + (0 if b_h is None else b_h))
        y = g(h @ w_ho.T + (0 if b_o is None else b_o))
        ys.append(y)
        s = decay * s + (y if teacher is None else teacher[t])
    return torch.stack(ys), s
