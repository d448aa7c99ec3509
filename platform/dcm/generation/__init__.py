"""Generation as a service: requests, their limits and one validation path (:mod:`.requests`), and the
:class:`VideoGenerator` the batch actors and the endpoint share (:mod:`.generator`)."""

from dcm.generation.generator import VideoGenerator, VideoResult, model_limits
from dcm.generation.requests import (
    ModelLimits,
    RequestLimits,
    ResolvedRequest,
    VideoRequest,
    check_request,
    resolve_request,
)

__all__ = [
    "ModelLimits",
    "RequestLimits",
    "ResolvedRequest",
    "VideoGenerator",
    "VideoRequest",
    "VideoResult",
    "check_request",
    "model_limits",
    "resolve_request",
]
