"""Generation as a service: requests, their limits and one validation path (:mod:`.requests`), the model's own
limits read from a loaded pipeline or from configs alone (:mod:`.model_limits`), and the :class:`VideoGenerator` the
batch actors and the endpoint share (:mod:`.generator`)."""

from dcm.generation.generator import VideoGenerator, VideoResult
from dcm.generation.model_limits import model_limits, model_limits_from_source
from dcm.generation.requests import (
    FPS_CEILING,
    ModelLimits,
    RequestLimits,
    ResolvedRequest,
    VideoRequest,
    check_request,
    resolve_request,
)

__all__ = [
    "FPS_CEILING",
    "ModelLimits",
    "RequestLimits",
    "ResolvedRequest",
    "VideoGenerator",
    "VideoRequest",
    "VideoResult",
    "check_request",
    "model_limits",
    "model_limits_from_source",
    "resolve_request",
]
