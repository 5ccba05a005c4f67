"""Policy and prompt: versioned data that the classifier applies.

The model scores; the policy decides. A ``Policy`` (categories with descriptions, thresholds
and actions) maps scores to ``flagged`` and ``action``; a ``Prompt`` (a static system text and a
user template) builds the messages. Both are YAML files with a ``version`` that every verdict
carries; the built-in defaults ship in ``consumer/data``.

The content is only ever placed in the user message, inside a ``<content>`` block with ``&``,
``<`` and ``>`` escaped, so no text can close the block or reach the system prompt.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from consumer.errors import ConfigError, describe_validation_error
from consumer.model.image_parts import content_parts
from consumer.model.messages import Message
from consumer.pipeline.images import CheckedImage
from schemas import Action, CategoryScore

_SEVERITY = {Action.ALLOW: 0, Action.REVIEW: 1, Action.BLOCK: 2}


class Category(BaseModel):
    """One policy category."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str
    threshold: Annotated[float, Field(ge=0.0, le=1.0)]
    action: Action

    @property
    def field(self) -> str:
        """The category's name as a JSON property in the model's reply (``self-harm/intent``
        becomes ``self_harm_intent``): strict schemas want plain identifiers."""
        return _field(self.name)


_CATEGORY_SCORES = TypeAdapter(dict[str, CategoryScore])


@functools.lru_cache(maxsize=1024)
def _field(name: str) -> str:
    # Cached: asked per category per reply, and a regex each time showed in the profile.
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


class FirstTier(BaseModel):
    """A first pass through the provider's moderations endpoint, before the chat model.

    Its scores are mapped to the policy's categories by name (a category the endpoint does not
    score counts 0.0). When no score lies inside the uncertain band ``[low, high)``, i.e. every
    score is below ``low`` or at/above ``high``, the first tier's scores decide (through
    :meth:`Policy.decide`, like the chat model's); when any score falls inside the band, the
    chat model is asked as well and its scores decide.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Annotated[str, Field(min_length=1)] = "omni-moderation-latest"
    uncertain_band: tuple[
        Annotated[float, Field(ge=0.0, le=1.0)], Annotated[float, Field(ge=0.0, le=1.0)]
    ] = (0.2, 0.8)

    @model_validator(mode="after")
    def _ordered_band(self) -> FirstTier:
        low, high = self.uncertain_band
        if low > high:
            raise ValueError(f"uncertain_band [{low}, {high}]: the low end is above the high end")
        return self

    def uncertain(self, score: float) -> bool:
        """Whether ``score`` lies inside the band ``[low, high)``."""
        low, high = self.uncertain_band
        return low <= score < high

    def decides(self, scores: dict[str, float]) -> bool:
        """Whether the first tier's ``scores`` decide alone: none lies inside the band."""
        return not any(self.uncertain(score) for score in scores.values())


class Policy(BaseModel):
    """Categories, thresholds and actions; the only place that turns scores into decisions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Annotated[str, Field(min_length=1)]
    refusal_action: Action = Action.REVIEW
    categories: Annotated[tuple[Category, ...], Field(min_length=1)]
    first_tier: FirstTier | None = None

    @model_validator(mode="after")
    def _unique_fields(self) -> Policy:
        fields = [c.field for c in self.categories]
        if len(set(fields)) != len(fields) or "" in fields:
            raise ValueError("category names must be distinct after normalisation to [a-z0-9_]")
        return self

    def decide(self, scores: dict[str, float]) -> tuple[bool, Action, dict[str, CategoryScore]]:
        """Flagged, action and per-category results for scores keyed by category name."""
        raw: dict[str, dict[str, Any]] = {}
        action = Action.ALLOW
        for cat in self.categories:
            score = scores[cat.name]
            hit = score >= cat.threshold
            raw[cat.name] = {"score": score, "flagged": hit}
            if hit and _SEVERITY[cat.action] > _SEVERITY[action]:
                action = cat.action
        # One validation for all categories: a model per category costs several times more.
        results = _CATEGORY_SCORES.validate_python(raw)
        flagged = any(r.flagged for r in results.values())
        return flagged, action, results

    @functools.cached_property
    def reply_model(self) -> type[BaseModel]:
        """The private pydantic model of the model's reply: one score field per category."""
        # Python names are positional, the JSON names are aliases: a category called
        # "model config" or "json" must not clash with BaseModel's own members.
        scores_model: type[BaseModel] = create_model(
            "Scores",
            __config__=ConfigDict(extra="forbid"),
            **{  # type: ignore[call-overload]
                f"c{i}": (Annotated[float, Field(ge=0.0, le=1.0, alias=c.field)], ...)
                for i, c in enumerate(self.categories)
            },
        )
        model: type[BaseModel] = create_model(
            "ModerationReply",
            __config__=ConfigDict(extra="forbid"),
            scores=(scores_model, ...),
            rationale=(Annotated[str, Field(max_length=1000)], ...),
        )
        return model

    @functools.cached_property
    def response_format(self) -> dict[str, Any]:
        """``response_format`` for a strict json_schema reply, written out by hand because
        strict mode accepts a subset of JSON Schema (no bounds, all fields required)."""
        props = {c.field: {"type": "number", "description": c.description} for c in self.categories}
        schema = {
            "type": "object",
            "properties": {
                "scores": {
                    "type": "object",
                    "properties": props,
                    "required": list(props),
                    "additionalProperties": False,
                },
                "rationale": {"type": "string"},
            },
            "required": ["scores", "rationale"],
            "additionalProperties": False,
        }
        return {
            "type": "json_schema",
            "json_schema": {"name": "moderation_reply", "strict": True, "schema": schema},
        }

    def scores_from_reply(self, reply: BaseModel) -> dict[str, float]:
        """Category name -> score, from a validated ``reply_model`` instance."""
        # reply_model's fields are made at run time: mypy cannot see ``scores``.
        scores = reply.scores  # type: ignore[attr-defined]
        return {name: float(getattr(scores, attr)) for name, attr in self._score_attributes}

    @functools.cached_property
    def _score_attributes(self) -> tuple[tuple[str, str], ...]:
        """(category name, attribute of the reply's ``scores``), as :attr:`reply_model` names
        them."""
        return tuple((c.name, f"c{i}") for i, c in enumerate(self.categories))


class Prompt(BaseModel):
    """The system text and the user template; the system text never contains content."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Annotated[str, Field(min_length=1)]
    system: Annotated[str, Field(min_length=1)]
    user: Annotated[str, Field(min_length=1)]
    context: str = ""

    @model_validator(mode="after")
    def _placeholders(self) -> Prompt:
        if _placeholders(self.user) != {"content", "context_block"}:
            raise ValueError(
                "user template needs the {content} and {context_block} placeholders and no "
                "others (write literal braces as {{ and }})"
            )
        if self.context and _placeholders(self.context) != {"context"}:
            raise ValueError("context template needs the {context} placeholder and no others")
        if "{" in self.system:
            raise ValueError("the system text is static: no placeholders, no content")
        return self


def _placeholders(template: str) -> set[str]:
    """The names ``str.format`` fills in ``template`` (``""`` for a positional ``{}``)."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError:  # a single "{" or "}"
        return {"<unbalanced brace>"}


def escape(text: str) -> str:
    """Escape content so it cannot open or close a block in the user message."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class PromptBuilder:
    """Builds the chat messages for one content under one policy and prompt."""

    def __init__(self, policy: Policy, prompt: Prompt) -> None:
        self.policy = policy
        self.prompt = prompt
        lines = [f"- {c.field}: {c.description}" for c in policy.categories]
        # Static text first and identical for every call: providers' prefix caches hit.
        self.system = prompt.system.rstrip() + "\n\nPolicy categories:\n" + "\n".join(lines)

    def messages(
        self, text: str, context: str | None, images: Sequence[CheckedImage] = ()
    ) -> list[Message]:
        """System + user messages; ``text``, ``context`` and ``images`` enter only the user
        message. With images its content is a list of parts: the prompt's user text, then one
        ``image_url`` part per image (the text's plain string form otherwise, as always)."""
        context_block = self.prompt.context.format(context=escape(context)) if context else ""
        user = self.prompt.user.format(content=escape(text), context_block=context_block)
        content: str | list[dict[str, Any]] = content_parts(user, images) if images else user
        return [{"role": "system", "content": self.system}, {"role": "user", "content": content}]

    def overhead_text(self) -> str:
        """Everything but the content, for the token budget (the context is counted by admit)."""
        parts = [self.system, self.prompt.user, self.prompt.context]
        return "\n".join(parts) + str(self.policy.response_format)


def _load_yaml(path: Path | None, default: str) -> Any:
    if path is None:
        return yaml.safe_load((resources.files("consumer") / "data" / default).read_text())
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from exc


def _yaml_problem(exc: yaml.YAMLError) -> str:
    # PyYAML's own text spans several lines with a caret drawing; one line is enough to fix it.
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


#: A policy file's model (Policy or Prompt).
Loaded = TypeVar("Loaded", bound=BaseModel)


def load_policy(path: Path | None = None) -> Policy:
    """The policy in ``path``, or the built-in OpenAI-taxonomy default."""
    return _validated(Policy, path, "policy")


def load_prompt(path: Path | None = None) -> Prompt:
    """The prompt in ``path``, or the built-in default."""
    return _validated(Prompt, path, "prompt")


def _validated(model: type[Loaded], path: Path | None, what: str) -> Loaded:
    try:
        return model.model_validate(_load_yaml(path, f"{what}.default.yaml"))
    except ValidationError as exc:
        problems = describe_validation_error(exc, whole=what)
        raise ConfigError(f"invalid {what} {path or 'default'}: {problems}") from exc


def prompt_file(version_or_path: str) -> Path:
    """A prompt file by path, or a built-in prompt by its version (``--prompt-version``)."""
    candidate = Path(version_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        return candidate
    data = resources.files("consumer") / "data"
    known = []
    for entry in sorted(data.iterdir(), key=lambda e: e.name):
        if entry.name.startswith("prompt.") and entry.name.endswith(".yaml"):
            version = str(yaml.safe_load(entry.read_text()).get("version"))
            known.append(version)
            if version == version_or_path:
                return Path(str(entry))
    raise ConfigError(
        f"no built-in prompt has version {version_or_path!r} (built-in: {', '.join(known)}); "
        "pass a path to a prompt YAML file instead"
    )
