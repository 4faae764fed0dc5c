"""Gradient statistics and per-sample gradient scores without per-sample gradients.

Everything here works on a *scope*: a list of linear-like modules (``nn.Linear``, GPT-2's
``Conv1D``, and optionally the token embedding) whose parameters the statistics cover.
Directions and statistics are dicts ``parameter name -> fp32 tensor`` shaped like the
parameter.

Per-sample scores ``<U, g_n>`` come from one batched backward pass. For a linear module
``y_t = W a_t + b`` the per-sample weight gradient is ``g_n = sum_t delta_{n,t} a_{n,t}^T``,
so ``<U, g_n> = sum_t delta_{n,t}^T U a_{n,t}`` (+ ``sum_t delta_{n,t}^T u_b``): a forward hook
keeps the module's input ``a`` and a tensor hook on its output receives ``delta``. The loss
of the pass is the SUM over samples of each sample's mean response-token loss, so row n of
``delta`` belongs to sample n alone (samples in a batch never interact in a causal LM with
right padding). Parameters are frozen during that pass: only activation gradients are
needed, which skips the weight-gradient matmuls of an ordinary backward; the contraction
costs the same FLOPs instead (one projection of every token per module), so the gain over a
per-sample loop is batching, not arithmetic (see bench/results/gradients.md). Scoring passes
run the output head on response positions only and, on CPU, short rows through an fp32
attention that beats SDPA's CPU kernel (``response_losses``).

Modules: ``scope`` (module naming and parameter scope), ``batching`` (encoding, batches),
``attention`` (the short-row attention patch), ``losses`` (response losses), ``statistics``
(v_new, v_prior, G, c, warm-up, the direction u), ``sums`` (the gradient sums an engine
computes), ``hooks`` (per-sample scores),
``crossfit`` (scoring against a held-out slice without self-alignment). Everything public
is re-exported here.
"""

from curator.scoring.gradients.attention import (
    _SHORT_ROW_ATTENTION,
    SHORT_ROW_ATTENTION_MAX_WIDTH,
    _register_short_row_attention,
    _short_row_attention,
    scoring_attention,
)
from curator.scoring.gradients.batching import (
    BATCH_OVERHEAD_TOKENS,
    _device_of,
    _max_len,
    _pad_id,
    encode_samples,
    iter_batches,
    padding_aware_batches,
    plan_batches,
)
from curator.scoring.gradients.crossfit import (
    DEFAULT_FOLDS,
    crossfit_folds,
    scores_by_fold,
)
from curator.scoring.gradients.hooks import (
    GATHER_PADDING_FRACTION,
    SampleScores,
    _leaf_input_embeddings,
    exact_scores,
    hook_scores,
    per_sample_gradients,
)
from curator.scoring.gradients.losses import (
    MIN_HEAD_ROWS,
    batch_losses,
    only_grad,
    per_sample_response_loss,
    response_logits,
    response_losses,
)
from curator.scoring.gradients.scope import (
    CONV1D,
    OTHER_LAYER,
    Grads,
    ScopedModule,
    layer_of,
    module_kind,
    resolve_scope,
    scope_for,
    scope_parameters,
)
from curator.scoring.gradients.statistics import (
    GradientStatistics,
    alignment_scores,
    gradient_statistics,
    heldout_gradients,
    holdout_slice,
    kl_prior_gradient,
    leave_fold_out,
    mean_gradient,
    pool_gradients,
    update_direction,
    warmup_copy,
)
from curator.scoring.gradients.sums import gradient_sums

__all__ = [
    "BATCH_OVERHEAD_TOKENS", "CONV1D", "DEFAULT_FOLDS", "alignment_scores", "crossfit_folds",
    "heldout_gradients", "holdout_slice", "leave_fold_out", "scores_by_fold", "GATHER_PADDING_FRACTION", "MIN_HEAD_ROWS",
    "OTHER_LAYER", "SHORT_ROW_ATTENTION_MAX_WIDTH", "GradientStatistics", "Grads",
    "SampleScores", "ScopedModule", "batch_losses", "encode_samples", "exact_scores",
    "gradient_statistics", "gradient_sums", "plan_batches", "hook_scores", "iter_batches", "kl_prior_gradient", "layer_of",
    "mean_gradient", "module_kind", "only_grad", "padding_aware_batches",
    "per_sample_gradients", "per_sample_response_loss", "pool_gradients", "resolve_scope",
    "response_logits", "response_losses", "scope_for", "scope_parameters",
    "scoring_attention", "update_direction", "warmup_copy",
    "_SHORT_ROW_ATTENTION", "_device_of", "_leaf_input_embeddings", "_max_len", "_pad_id",
    "_register_short_row_attention", "_short_row_attention",
]
