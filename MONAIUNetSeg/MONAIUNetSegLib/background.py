"""The module Logic's segmentation jobs against the scene: write a volume node's input and start ``segment-case``
on it, bring a finished job's labelmap back as the result, and turn a batch's outcomes into results or one error.

Why here and not in the Logic: the module file stays GUI wiring (issue 31); this is the MRML side of ``jobs``.
Qt-free; nodes are looked up by ID in the scene passed in (a node may leave the scene while its job waits).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from MONAIUNetSegLib import jobs, models, segmentations, training_cases


def child_environment(startupEnvironment=None) -> dict:
    """The child's environment: Slicer's start-up one (``slicer.util.startupEnvironment``) when given, else this
    process's, with the core importable."""
    try:
        base = startupEnvironment() if startupEnvironment else None
    except AttributeError:  # headless (no slicer.app)
        base = None
    return jobs.child_environment(base)


def requested_volume(scene, request):
    volumeNode = scene.GetNodeByID(request.volumeNodeID)
    if volumeNode is None:
        raise RuntimeError(f"'{request.name}' was removed from the scene before it was segmented")
    return volumeNode


def start(scene, request, env: dict | None = None) -> jobs.Job:
    """Write the volume to a temporary NIfTI and start ``segment-case`` on it."""
    volumeNode = requested_volume(scene, request)
    workDir = tempfile.mkdtemp(prefix="MONAIUNetSeg-")
    try:
        inputPath = segmentations.prepare_background_input(volumeNode, workDir)
        return jobs.start_job(request, inputPath, workDir, env=env)
    except Exception:
        shutil.rmtree(workDir, ignore_errors=True)
        raise


def finish(scene, job: jobs.Job, returncode: int):
    """A finished job's labelmap as the result in the scene; raises saying why it failed."""
    result = job.result(returncode)
    volumeNode = requested_volume(scene, job.request)
    segmentationID = job.request.segmentationNodeID
    segmentationNode = scene.GetNodeByID(segmentationID) if segmentationID else None
    outcome = segmentations.import_background_result(result.output, volumeNode, segmentationNode,
                                                     job.request.createLabelmap, job.started,
                                                     (result.confidence, result.review == "yes", result.review_reasons))
    return mark(outcome, volumeNode, job.request.model, job.request.bundle)


def mark(result, volumeNode, model: str, bundle: str | None):
    """The result with what made it recorded on its node (for *Add to training cases*)."""
    training_cases.mark_result(result.segmentationNode, result.segmentId, volumeNode,
                               models.ModelChoice(model, bundle).describe())
    return result


def results_or_raise(outcomes: list[jobs.JobOutcome]) -> list:
    """The results in order; a failure raises (a single job's own error, else one listing every failed scan)."""
    failures = [o for o in outcomes if not o.ok]
    if len(failures) == 1 and len(outcomes) == 1:
        raise failures[0].error
    if failures:
        raise jobs.BackgroundError(f"segmentation failed for {len(failures)} of {len(outcomes)} scan(s): "
                                   + "; ".join(f"{o.request.name}: {o.error}" for o in failures))
    return [o.result for o in outcomes]


def temp_constraints() -> str:
    return os.path.join(tempfile.gettempdir(), "MONAIUNetSeg-constraints.txt")
