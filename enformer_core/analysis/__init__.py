"""Instruments for judging a backbone: loading any model, parameters & FLOPs, throughput and
memory, cluster assignments.  The tools in ``tools/analysis`` and ``tools/visualization``
are thin command lines over this package::

    from enformer_core.analysis import load_model, complexity, benchmark_inference
    lm = load_model('enformer_s')                      # or a config file of any task
    info = complexity(lm, shape=(224, 224))            # params, FLOPs, per-stage table
    speed = benchmark_inference(lm.model, batch=32, shape=(224, 224))
"""
from .assignments import AssignmentRecord, collect_assignments, record_assignments
from .benchmark import (benchmark_inference, benchmark_train_step, gemm_rate, gemm_rates,
                        load_warning, machine_description, make_train_step, prepare_for_speed)
from .complexity import (COUNTED_OPS, EXTRA_OP_RULES, PAPER_UNIT, complexity, count_flops,
                         count_params, flop_target, format_complexity, param_summary)
from .loading import (IMAGENET_MEAN, IMAGENET_STD, SCOPE_TASKS, TASK_SHAPES, LoadedModel,
                      has_deploy_form, is_config_path, load_model, reparameterize)

__all__ = ['AssignmentRecord', 'collect_assignments', 'record_assignments',
           'benchmark_inference', 'benchmark_train_step', 'gemm_rate', 'gemm_rates',
           'load_warning', 'machine_description', 'make_train_step',
           'prepare_for_speed', 'COUNTED_OPS', 'EXTRA_OP_RULES', 'PAPER_UNIT', 'complexity',
           'count_flops', 'count_params', 'flop_target', 'format_complexity', 'param_summary',
           'IMAGENET_MEAN', 'IMAGENET_STD', 'SCOPE_TASKS', 'TASK_SHAPES', 'LoadedModel',
           'has_deploy_form', 'is_config_path', 'load_model', 'reparameterize']
