"""`ami-edge distill`: a smaller JEPA student from any loadable teacher, by layer-pair knowledge distillation.

Teacher: any checkpoint `ami-edge export` loads (official, Hugging Face, native, preset) run in torch, or a bundle run
in ONNX Runtime (no gradient flows through the teacher, so its exported graphs are enough). Student: the teacher's
architecture made smaller (width, depth, heads, resolution, frames, patch), same position scheme and layout.

Losses, per pair of layers (ModelOpt's layer-pair KD; each term is smooth-L1 plus 1 - cosine):
- `feature`: student encoder tokens, through a learned projection P (student width -> teacher width), match the
  teacher's tokens resampled onto the student's token grid (the student's clip is the teacher clip's last frames);
- `predictor`: the student predictor's next-step prediction, through the same P, matches the teacher predictor's
  next-step prediction on the same grid. Sharing P keeps the two in one student space: a prediction is right when
  it maps where the teacher's prediction lies, exactly as the student's tokens map onto the teacher's;
- `self`: the student prediction matches the student encoder's own tokens of that step (stop-gradient), so the
  directions P ignores cannot drift and surprise (prediction vs observation, in student space) stays meaningful;
- `ac`: the action-conditioned predictor's next-step prediction, like `predictor`, on clips that carry actions.
Teacher targets are divided by the teacher token std measured on the first batch (recorded), so the loss scale does
not depend on how large a given checkpoint's latents are.

Runs on one process or under `torchrun` (DistributedDataParallel: gloo on CPU, nccl on GPU); rank 0 writes the
resumable checkpoint (safetensors + JSON, no pickle), the metrics plot, the report and the student bundle.
"""


from .cli import run, teacher_scorer, voe
from .models import BundleTeacher, StudentSpec, Teacher, TorchTeacher, count, load_teacher, student_config, to_layout
from .models import prediction_ids
from .trainer import CHECKPOINT, DistillConfig, Distiller, Pair, resample

__all__ = ["CHECKPOINT", "BundleTeacher", "DistillConfig", "Distiller", "Pair", "StudentSpec", "Teacher",
           "TorchTeacher", "count", "load_teacher", "prediction_ids", "resample", "run", "student_config",
           "teacher_scorer", "to_layout", "voe"]
