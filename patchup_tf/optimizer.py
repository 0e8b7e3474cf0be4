"""PyTorch's SGD in Keras 3: coupled L2 and a momentum buffer without the lr.

The paper trains with `torch.optim.SGD(lr=0.1, momentum=0.9, nesterov=True,
weight_decay=1e-4)`. Its update is `g = grad + wd p`, `buf = mu buf + g`,
`p -= lr (g + mu buf)` (Nesterov) or `p -= lr buf`. Keras' `SGD` keeps `lr`
inside its buffer and its `weight_decay` is decoupled, so the two differ after
every learning-rate drop; this optimizer computes PyTorch's update.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="patchup")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with PyTorch's momentum and coupled L2 weight decay.

    Args:
        learning_rate: float or schedule, default 0.1.
        momentum: float >= 0, default 0.9.
        nesterov: bool, default True.
        l2: float >= 0, default 1e-4, added to every gradient as `l2 * p`
            (every parameter: BN scales and biases included, as PyTorch).
        **kwargs: as `keras.optimizers.Optimizer` (not `weight_decay`).
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=True, l2=1e-4,
                 name="torch_sgd", **kwargs):
        if kwargs.get("weight_decay"):
            raise ValueError(
                "TorchSGD takes coupled weight decay as `l2`; `weight_decay` "
                f"(decoupled) is not supported. Received: weight_decay={kwargs['weight_decay']}"
            )
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        for key, value in (("momentum", momentum), ("l2", l2)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(
                    f"Invalid value received for argument `{key}`. Expected a "
                    f"float >= 0. Received: {key}={value!r}"
                )
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.l2 = float(l2)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = []
        if self.momentum:
            self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.l2:
            g = ops.add(g, ops.multiply(ops.cast(self.l2, variable.dtype), variable))
        if self.momentum:
            mu = ops.cast(self.momentum, variable.dtype)
            buf = self.momentums[self._get_variable_index(variable)]
            self.assign(buf, ops.add(ops.multiply(buf, mu), g))
            g = ops.add(g, ops.multiply(buf, mu)) if self.nesterov else buf
        self.assign_sub(variable, ops.multiply(g, lr))

    def get_config(self):
        return {
            **super().get_config(),
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "l2": self.l2,
        }
