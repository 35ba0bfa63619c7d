"""The teacher and the student: small MLPs with two heads over the same input.

* **Distribution head** (`forward`): logits over `num_bins` ordinal reward bins, how outcomes
  vary (aleatoric). The softmax (with or without a temperature) belongs to the loss and to
  prediction, never to the model. LayerNorm, not BatchNorm, so a batch of one works.
* **Value head** (`value`, `draw`): a Bayesian linear regression (`bayes.BayesianLinear`) of
  the return on the network's input features and a bias, fitted in closed form after the
  distribution head (`fit_value`). Its mean is the estimate an agent acts on, its posterior
  standard deviation how unsure the model is (epistemic: it shrinks as data arrive), and a
  draw from its posterior is a Thompson sample. It is held as buffers, so it is saved and
  loaded with the weights.

Given a `torch.Generator`, a network draws its initial weights and its dropout masks from it and
never from torch's global RNG, so that a training in a background thread is reproducible and
leaves every other thread's random numbers alone.

    teacher: x = [q, r, q * r, |q - r|] -> 256 -> num_bins logits;   value: BLR on x
    student: x = q                      -> 128 -> num_bins logits;   value: BLR on x
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from langchain_kd_memory.bayes import BayesianLinear
from langchain_kd_memory.config import DistillationConfig, StudentConfig, TeacherConfig
from langchain_kd_memory.errors import EmbeddingDimensionError, InvalidArgumentError

INFERENCE_CHUNK = 4096
"""Rows per forward pass when predicting or evaluating."""


class Dropout(nn.Module):
    """`nn.Dropout` that draws its masks from `generator` (torch's global RNG if None)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` with a share `p` of its values zeroed and the rest scaled by 1 / (1 - p)."""
        if not self.training or self.p == 0.0:
            return x
        if self.generator is None:
            return F.dropout(x, self.p, training=True)
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=self.generator)
        return x * keep / (1.0 - self.p)


class RewardMLP(nn.Module):
    """Linear -> LayerNorm -> GELU -> Dropout per hidden layer, then a linear head to logits."""

    def __init__(
        self,
        input_dim: int,
        hidden_sizes: tuple[int, ...],
        num_bins: int,
        dropout: float,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for hidden in hidden_sizes:  # on the meta device: torch's own init would draw globally
            layers += [
                nn.Linear(width, hidden, device="meta"), nn.LayerNorm(hidden, device="meta"),
                nn.GELU(), Dropout(dropout),
            ]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_bins, device="meta")
        target = torch.device("cpu" if device is None else device)
        if target.type != "meta":
            self.to_empty(device=target)
            self.reset_parameters(generator)
        set_dropout_generator(self, generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise as `nn.Linear` and `nn.LayerNorm` do, drawing from `generator`."""
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
            elif isinstance(layer, nn.LayerNorm):
                layer.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (batch, num_bins)."""
        return self.head(self.body(x))


class ValueHead(nn.Module):
    """The posterior of a `BayesianLinear` over the network's input, held as float32 buffers.

    Before `fit` its buffers are zeros: a posterior with no weights and no count, which a
    trained network never has.
    """

    def __init__(self, input_dim: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        for name, shape in BayesianLinear.shapes("posterior", input_dim).items():
            self.register_buffer(name.replace(".", "_"), torch.zeros(shape, device=device))
        self._cached: tuple[tuple[tuple[int, int], ...], BayesianLinear] | None = None

    def _posterior(self) -> BayesianLinear:
        """The posterior of the buffers, rebuilt (float64) only when one of them changed."""
        key = tuple((buffer.data_ptr(), buffer._version) for buffer in self.buffers())
        if self._cached is None or self._cached[0] != key:
            self._cached = key, BayesianLinear.from_tensors(
                {name: getattr(self, name.replace(".", "_"))
                 for name in BayesianLinear.shapes("posterior", 1)}, "posterior",
            )
        return self._cached[1]

    def fit(self, x: torch.Tensor, targets: torch.Tensor, groups: list[int], *,
            keep_priors: bool = False) -> None:
        """Fit the posterior to `targets` (n,) given inputs `x` (n, input_dim).

        `x` is made of blocks of the sizes `groups`, each with its own prior precision, chosen
        by the evidence; with `keep_priors`, the current fit's precisions are kept.
        """
        priors = self._posterior() if keep_priors else None
        posterior = BayesianLinear.fit(x, targets, groups, priors=priors)
        for name, tensor in posterior.tensors("posterior").items():
            getattr(self, name.replace(".", "_")).copy_(tensor)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and epistemic standard deviation (float64) of each row of `x`."""
        return self._posterior().predict(x)

    def mean_of(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean (float64) of each row of `x`, without its standard deviation."""
        return self._posterior().mean_of(x)

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One Thompson draw (float64) for all rows of `x`, from one posterior weight vector."""
        return self._posterior().sample(x, generator)


def _check_input(name: str, x: torch.Tensor, dim: int) -> None:
    if x.ndim != 2 or x.shape[1] != dim:
        raise EmbeddingDimensionError(
            f"{name} must have shape (batch, {dim}), got {tuple(x.shape)}"
        )


class ValueNetwork(nn.Module):
    """What the teacher and the student share: an input encoding, two heads over it."""

    mlp: RewardMLP
    value_head: ValueHead
    blocks: int
    """How many embedding-sized blocks `encode` concatenates (each gets its own prior)."""
    embedding_dim: int

    def encode(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The network's input features from its embeddings."""
        raise NotImplementedError

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_bins) of the reward distribution."""
        return self.mlp(self.encode(*inputs))

    def value(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The value head's estimate and its epistemic standard deviation, (batch,) each."""
        return self.value_head(self.encode(*inputs))

    def expected(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The value head's estimate alone, (batch,)."""
        return self.value_head.mean_of(self.encode(*inputs))

    def draw(self, *inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One Thompson draw of the value of every row, (batch,)."""
        return self.value_head.draw(self.encode(*inputs), generator)

    def fit_value(self, inputs: tuple[torch.Tensor, ...], targets: torch.Tensor, *,
                  keep_priors: bool = False) -> None:
        """Fit the value head's posterior to `targets` (n,) in closed form (`ValueHead.fit`)."""
        with torch.no_grad():
            self.value_head.fit(self.encode(*inputs), targets,
                                [self.embedding_dim] * self.blocks, keep_priors=keep_priors)


class TeacherNetwork(ValueNetwork):
    """The network that sees responses (privileged): Q(query, response)."""

    def __init__(
        self,
        embedding_dim: int,
        num_bins: int = 64,
        config: TeacherConfig | None = None,
        privileged: bool = True,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Build the teacher.

        Args:
            embedding_dim: Dimension of one embedding (query or response).
            num_bins: Number of reward bins (output logits).
            config: Hidden sizes, dropout, interactions; `TeacherConfig()` if None.
            privileged: Whether the input is query and response (else the query alone).
            device: Where to create the parameters (CPU if None); "meta" gives their shapes
                without memory or initialisation.
            generator: Draws the initial weights and the dropout masks (on `device`); torch's
                global RNG if None.
        """
        super().__init__()
        config = config or TeacherConfig()
        self.embedding_dim = embedding_dim
        self.privileged = privileged
        self.interactions = privileged and config.interactions
        self.blocks = 4 if self.interactions else 2 if privileged else 1
        input_dim = self.blocks * embedding_dim
        self.mlp = RewardMLP(
            input_dim, config.hidden_sizes, num_bins, config.dropout, device, generator
        )
        self.value_head = ValueHead(input_dim, device)

    @classmethod
    def of(cls, embedding_dim: int, config: DistillationConfig, **where: Any) -> TeacherNetwork:
        """The teacher `config` describes; `where`: `device=`, `generator=` as above."""
        return cls(embedding_dim, config.num_bins, config.teacher, config.privileged, **where)

    def encode(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``[q, r, q * r, |q - r|]``, ``[q, r]`` or ``q``, from (query, response) embeddings."""
        query, response = inputs[0], inputs[1] if len(inputs) > 1 else None
        _check_input("query", query, self.embedding_dim)
        if not self.privileged:
            return query
        if response is None:
            raise InvalidArgumentError(
                "a privileged teacher needs the response embeddings: pass them (zeros for an "
                "unknown response), or build it with privileged=False"
            )
        _check_input("response", response, self.embedding_dim)
        parts = [query, response]
        if self.interactions:
            parts += [query * response, (query - response).abs()]
        return torch.cat(parts, dim=1)


class StudentNetwork(ValueNetwork):
    """The small network used before anything is generated: V(query), the query alone."""

    def __init__(
        self,
        embedding_dim: int,
        num_bins: int = 64,
        config: StudentConfig | None = None,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        """Build the student.

        Args:
            embedding_dim: Dimension of the query embedding.
            num_bins: Number of reward bins (output logits).
            config: Hidden sizes and dropout; `StudentConfig()` if None.
            device: Where to create the parameters (CPU if None); "meta" gives their shapes
                without memory or initialisation.
            generator: Draws the initial weights and the dropout masks (on `device`); torch's
                global RNG if None.
        """
        super().__init__()
        config = config or StudentConfig()
        self.embedding_dim = embedding_dim
        self.blocks = 1
        self.mlp = RewardMLP(
            embedding_dim, config.hidden_sizes, num_bins, config.dropout, device, generator
        )
        self.value_head = ValueHead(embedding_dim, device)

    @classmethod
    def of(cls, embedding_dim: int, config: DistillationConfig, **where: Any) -> StudentNetwork:
        """The student `config` describes; `where`: `device=`, `generator=` as above."""
        return cls(embedding_dim, config.num_bins, config.student, **where)

    def encode(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The query embedding."""
        _check_input("query", inputs[0], self.embedding_dim)
        return inputs[0]


def predict_logits(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits of `model(*inputs)` at `rows` (all if None), without gradients, in chunks.

    The model must already be in eval mode (training leaves it so; loading sets it): switching
    modes on every call would cost more than a batch-of-one forward pass.
    """
    rows = torch.arange(len(inputs[0]), device=inputs[0].device) if rows is None else rows
    with torch.no_grad():
        return torch.cat(
            [model(*(x[chunk] for x in inputs)) for chunk in rows.split(INFERENCE_CHUNK)]
        )


def set_dropout_generator(module: nn.Module, generator: torch.Generator | None) -> None:
    """Make every dropout layer of `module` draw its masks from `generator` (on its device)."""
    for layer in module.modules():
        if isinstance(layer, Dropout):
            layer.generator = generator


def tensor_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in `module.state_dict()`, by name."""
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters (the value head's posterior is fitted, not trained)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
