"""Fast paths (enformer_core.ops.fused) and CPU deployment forms (enformer_core.deploy).

The fused paths must compute what the plain modules compute: eval-mode outputs within 1e-5
of the unfused graph, every new autograd Function passes a float64 gradcheck, and the fp32
Functions match plain autograd.  bf16/int8 forms are compared with fp32 on random weights of
the published layout (their accuracy effect; docs/benchmarks.md)."""
import math

import pytest
import torch
import torch.nn.functional as F

from enformer_core import create_model, list_models, load_checkpoint
from enformer_core.deploy import NonFiniteRows, agreement, convert_for_cpu, logit_error
from enformer_core.ops import clustering as ops
from enformer_core.ops import fused, quantized
from enformer_core.ops.quantized import (Int8Linear, Int8Weight, activation_qparams, int8_linear,
                                         int8_linear_reference)
from enformer_core.ops.quantized_conv import (Int8Conv2d, Int8ConvWeight, int8_conv2d,
                                              int8_conv2d_reference, int8_conv_mlp,
                                              int8_conv_mlp_reference)


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def _lively(model):
    """Non-trivial BatchNorm statistics, layer scales and similarity scales."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('gamma'):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.1)
            elif 'sim_' in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        for name, b in model.named_buffers():
            if name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model


@pytest.fixture(scope='module')
def published_s(published_state):
    """EnFormer-S with random N(0, 1) weights of the published layout (positive variances)."""
    model = create_model('enformer_s')
    load_checkpoint(model, published_state('enformer_s'))
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith('running_var'):
                b.abs_().add_(0.1)
    return model.eval()


# ----------------------------------------------------------------------------- gradchecks
def test_linear_silu_linear_gradcheck_and_plain_autograd():
    args = [_rand(*s).requires_grad_() for s in [(2, 3, 4, 5), (7, 5), (7,), (5, 7), (5,)]]
    assert torch.autograd.gradcheck(fused.LinearSiLULinear.apply, args)
    assert torch.autograd.gradcheck(fused._Linear.apply, args[:3])
    # fp32 (the oneDNN matmuls) against plain autograd
    a32 = [a.detach().float().requires_grad_() for a in args]
    out = fused.LinearSiLULinear.apply(*a32)
    ref = F.linear(F.silu(F.linear(*a32[:3])), a32[3], a32[4])
    g = torch.randn_like(out)
    for x, y in zip(torch.autograd.grad((out * g).sum(), a32),
                    torch.autograd.grad((ref * g).sum(), a32)):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-5)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_cosine_similarity_function_gradcheck_and_values():
    c, p = _rand(2, 5, 4).requires_grad_(), _rand(2, 7, 4).requires_grad_()
    assert torch.autograd.gradcheck(ops.cosine_similarity, (c, p))
    with torch.no_grad():  # the composed maths (no autograd) gives the same values
        plain = ops.cosine_similarity(c, p)
    assert torch.allclose(ops.cosine_similarity(c, p), plain, atol=1e-12)
    # a clamped (zero) norm: finite gradients, those of x / eps
    z = torch.zeros(1, 1, 4, dtype=torch.float64, requires_grad=True)
    grad = torch.autograd.grad(ops.cosine_similarity(z, p[:1]).sum(), z)[0]
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize('channels_last', [False, True])
def test_adaptive_pool_saves_nothing_and_gradchecks(channels_last):
    x = _rand(2, 3, 11, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fused.adaptive_avg_pool_nchw(t, (4, 3)), (x,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused.adaptive_avg_pool_nchw(x, (4, 3))
    assert not saved


# ----------------------------------------------------------------------------- eval graph
@pytest.mark.parametrize('arch', ['s', 'b', 'l'])   # depthwise kernels 3, 3/5, 3/5/7
def test_fused_eval_graph_equals_unfused(arch, monkeypatch):
    """inference_mode (folded BN branches and layer scales, oneDNN calls with fused SiLU and
    residual adds, the FFN in row blocks, pool-then-project) == the eval graph under autograd
    (BN branches, layer scales and SiLU as separate ops)."""
    model = _lively(create_model(f'enformer_{arch}')).eval()
    x = torch.randn(2, 3, 64, 96)
    ref = model(x).detach()                      # autograd on: the plain, unfused graph
    monkeypatch.setattr(fused, 'MLP_ROWS', 64)   # force the row-block FFN on a small input
    with torch.inference_mode():
        out = model(x)
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_train_graph_ffn_is_one_node_with_the_plain_gradients():
    """The FFN under autograd is one LinearSiLULinear node (input and pre-activation saved)
    whose gradients equal those of the plain module composition (fp32, oneDNN matmuls)."""
    torch.manual_seed(0)
    ffn = _lively(create_model('enformer_s')).backbone.stages[1].blocks[0].ffn.train()
    h = torch.randn(2, 12, 12, 80, requires_grad=True)

    def plain(t):
        y = ffn.dwconv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return ffn.fc2.fc(F.silu(ffn.fc1(y))) * ffn.fc2.gamma

    params = [h] + list(ffn.parameters())
    out, ref = ffn(h), plain(h)
    assert 'LinearSiLULinear' in type(out.grad_fn).__name__
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(out)
    ours = torch.autograd.grad((out * g).sum(), params)
    plain_grads = torch.autograd.grad((ref * g).sum(), params)
    scale = max(b.abs().max().item() for b in plain_grads)
    for a, b in zip(ours, plain_grads):   # relative to the largest gradient (BN biases
        assert (a - b).abs().max() <= 1e-5 * scale   # before a BN have ~0 gradients)


# ----------------------------------------------------------------------------- deployment
def test_convert_for_cpu_fp32_is_the_eval_graph(published_s):
    x = torch.randn(2, 3, 64, 64)
    fp32 = convert_for_cpu(published_s, 'fp32')
    err = logit_error(published_s, fp32, x)
    assert err['max_rel'] < 1e-5 and err['top1_agreement'] == 1.0
    # the input model is untouched (not re-parameterised)
    assert hasattr(published_s.backbone.stages[0].blocks[0].ffn.dwconv, 'bn')


def test_bf16_close_to_fp32(published_s):
    """bf16 (8 mantissa bits): logits within 2 % of the largest fp32 logit."""
    x = torch.randn(4, 3, 96, 96)
    bf16 = convert_for_cpu(published_s, 'bf16')
    assert next(bf16.parameters()).dtype == torch.bfloat16
    with torch.inference_mode():
        assert bf16(x).dtype == torch.float32
    err = logit_error(published_s, bf16, x)
    assert err['max_rel'] < 2e-2, err


def test_int8_close_to_fp32(published_s):
    """int8 linears (oneDNN): logits within 5 % of the largest fp32 logit; the head and the
    centre projections stay float; the input model is untouched."""
    x = torch.randn(2, 3, 96, 96)
    int8 = convert_for_cpu(published_s, 'int8')
    ffn = int8.module.backbone.stages[2].blocks[0].ffn
    assert isinstance(ffn.fc1, Int8Linear) and isinstance(ffn.fc2.fc, Int8Linear)
    assert isinstance(ffn.fc1.weight, Int8Weight)
    assert type(int8.module.head.fc) is torch.nn.Linear            # the head stays float
    assert all(type(m) is torch.nn.Linear for n, m in int8.named_modules()
               if n.endswith('centre_proj'))
    assert type(published_s.backbone.stages[2].blocks[0].ffn.fc1) is torch.nn.Linear
    with torch.inference_mode():
        assert int8(x).dtype == torch.float32
    err = logit_error(published_s, int8, x)
    assert err['max_rel'] < 5e-2, err
    # quantisation is not a no-op: the logits do move
    assert err['max_abs'] > 0


@pytest.mark.parametrize('name', list_models())
def test_every_model_has_bf16_and_int8_forms(name):
    """Every classifier (EnFormer and the baselines) converts; int8 replaces its Linears,
    and with layer scales of 0.3 (the residual branches matter) both forms stay within
    15 % of the largest fp32 logit of random weights (the published-layout test above holds
    EnFormer-S to 2 % / 5 %)."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith('gamma') or 'layer_scale' in n:
                p.fill_(0.3)
    x = torch.randn(2, 3, 64, 64)
    int8 = convert_for_cpu(model, 'int8')
    assert sum(isinstance(m, Int8Linear) for m in int8.modules()) > 0
    static = convert_for_cpu(model, 'int8', calibration=[x])
    assert sum(isinstance(m, Int8Conv2d) for m in static.modules()) > 0      # convs too
    for form in (int8, static, convert_for_cpu(model, 'bf16')):
        err = logit_error(model, form, x)
        assert 0 < err['max_rel'] < 0.15, (name, err)


def test_static_int8_calibrated_close_to_fp32_and_to_dynamic(published_s):
    """Calibration fixes every int8 layer's input quantisation; the static form also runs
    the stem, downsampling and folded FFN convs in int8 (the dynamic form keeps them float)
    and stays within 5 % of the largest fp32 logit (on images like the calibration ones)."""
    torch.manual_seed(0)
    calib = [torch.randn(4, 3, 96, 96) for _ in range(2)]
    static = convert_for_cpu(published_s, 'int8', calibration=calib)
    weights = [m.weight for m in static.modules() if isinstance(m, (Int8Linear, Int8Conv2d))]
    assert weights and all(w.input_qparams is not None and not w.observing for w in weights)
    assert 'static' in repr(static)
    backbone = static.module.backbone
    convs = [backbone.stem.conv1, backbone.stem.conv2, backbone.stages[0].downsample.conv,
             backbone.stages[3].blocks[0].ffn.dwconv]
    assert all(isinstance(c, Int8Conv2d) for c in convs)
    assert convs[-1].weight.groups == 320 and convs[0].weight.stride == [2, 2]
    dynamic = convert_for_cpu(published_s, 'int8')
    assert not any(isinstance(m, Int8Conv2d) for m in dynamic.modules())
    # unfolded (fold=False): the FFN's branch convs are not the whole op and stay float
    unfolded = convert_for_cpu(published_s, 'int8', fold=False, calibration=calib)
    ffn = unfolded.module.backbone.stages[0].blocks[0].ffn
    assert type(ffn.dwconv.conv) is torch.nn.Conv2d
    assert isinstance(unfolded.module.backbone.stem.conv1, Int8Conv2d)
    assert logit_error(published_s, unfolded, calib[0])['max_rel'] < 5e-2
    x = torch.randn(2, 3, 96, 96)
    err = logit_error(published_s, static, x)
    assert 0 < err['max_rel'] < 5e-2, err


def test_dense_backbone_forms_compare_all_their_maps():
    """A dense backbone (four feature maps) converts to every form; logit_error compares
    all the maps together and reports no top-1 agreement (there are no logits)."""
    from enformer_core.models.enformer import EnFormer
    torch.manual_seed(0)
    backbone = EnFormer(arch='s', out_indices=(0, 1, 2, 3)).eval()
    x = torch.randn(2, 3, 64, 64)
    forms = {dtype: convert_for_cpu(backbone, dtype) for dtype in ('bf16', 'int8')}
    forms['int8-static'] = convert_for_cpu(backbone, 'int8', calibration=[x])
    for dtype, form in forms.items():
        with torch.inference_mode():
            maps = form(x)
        assert [m.shape[1] for m in maps] == [40, 80, 160, 320]
        assert all(m.dtype == torch.float32 for m in maps)
        err = logit_error(backbone, form, x)
        assert 'top1_agreement' not in err and 0 < err['max_rel'] < 5e-2, (dtype, err)


def test_int8_form_copies_saves_and_loads(published_s, tmp_path):
    """A converted int8 model deep-copies, and its state dict (quantised weights and static
    input quantisation included) loads into another int8 model: same outputs."""
    import copy
    torch.manual_seed(0)
    static = convert_for_cpu(published_s, 'int8', calibration=[torch.randn(2, 3, 64, 64)])
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = static(x)
        assert torch.equal(copy.deepcopy(static)(x), ref)
    state = static.state_dict()
    key = 'module.backbone.stages.2.blocks.0.ffn.fc1.qweight'
    assert state[key].dtype == torch.int8
    assert not torch.isnan(state[key.replace('qweight', 'input_qparams')]).any()  # static
    torch.save(state, tmp_path / 'int8.pth')
    # other weights and other ranges (the static form's convs are int8 too, so its state
    # dict loads into a static form)
    other = convert_for_cpu(create_model('enformer_s'), 'int8',
                            calibration=[torch.randn(1, 3, 64, 64) * 5])
    other.load_state_dict(torch.load(tmp_path / 'int8.pth', weights_only=True))
    with torch.inference_mode():
        assert torch.equal(other(x), ref)
    # the FFNs' fc1 carry their pre-activation quantisation (SiLU as a table); a state dict
    # saved before that existed loads, and those FFNs fuse the SiLU into fc1 again
    act = key.replace('qweight', 'act_qparams')
    assert not torch.isnan(state[act]).any()
    assert torch.isnan(state[key.replace('fc1.qweight', 'fc2.fc.act_qparams')]).all()
    old = {k: v for k, v in state.items() if not k.endswith('act_qparams')}
    other.load_state_dict(old)
    fc1 = other.module.backbone.stages[2].blocks[0].ffn.fc1
    assert fc1.weight.act_qparams is None and fc1.weight.input_qparams is not None
    with torch.inference_mode():
        assert logit_error(static, other, x)['max_rel'] < 2e-2


def test_silu_table_maps_preactivation_codes_to_silu_codes():
    from enformer_core.ops.native import silu_table
    table = silu_table((0.05, 140), (0.02, 20))
    z = (torch.arange(256.0) - 140) * 0.05
    want = torch.clamp(torch.round(F.silu(z) / 0.02) + 20, 0, 255)
    assert table.dtype == torch.uint8 and torch.equal(table.float(), want)
    assert silu_table((0.05, 140), (0.02, 20)) is table                # cached
    assert not torch.equal(silu_table((0.05, 140), (0.03, 9)), table)


def test_int8_forms_give_nan_rows_for_non_finite_inputs(published_s):
    x = torch.randn(3, 3, 64, 64)
    x[1, 0, 5, 5] = float('nan')
    for form in (convert_for_cpu(published_s, 'int8'),
                 convert_for_cpu(published_s, 'int8', calibration=[torch.randn(2, 3, 64, 64)])):
        with torch.inference_mode():
            out = form(x)
            assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2]]).all()
    # huge finite inputs overflow the one-pass check's sum; the per-sample test clears them
    huge = torch.full((2, 3, 4, 4), 3e38)
    assert torch.isinf(huge.sum())
    assert torch.equal(NonFiniteRows(torch.nn.Identity(), 'int8')(huge), huge)


def test_keep_float_leaves_the_named_layers_float(published_s):
    """keep_float: layers (or everything inside a module) named by fnmatch patterns stay
    float in the int8 forms; the FFN then runs its mixed chain (int8 conv, float fc1, int8
    fc2) and the outputs move towards fp32.  Patterns that match no int8 layer of the form
    are an error naming the layers there are."""
    torch.manual_seed(0)
    calib = [torch.randn(2, 3, 64, 64) for _ in range(2)]
    x = torch.randn(2, 3, 64, 64)
    full = convert_for_cpu(published_s, 'int8', calibration=calib)
    kept = convert_for_cpu(published_s, 'int8', calibration=calib,
                           keep_float=['backbone.stem.conv1', 'backbone.stages.0.blocks.0.ffn.fc1',
                                       'backbone.stages.3.*'])
    bb = kept.module.backbone
    assert type(bb.stem.conv1) is torch.nn.Conv2d and isinstance(bb.stem.conv2, Int8Conv2d)
    ffn = bb.stages[0].blocks[0].ffn
    assert type(ffn.fc1) is torch.nn.Linear and isinstance(ffn.dwconv, Int8Conv2d)
    assert not any(isinstance(m, (Int8Linear, Int8Conv2d)) for m in bb.stages[3].modules())
    with torch.inference_mode():
        ref, out_full, out_kept = published_s(x), full(x), kept(x)
    assert not torch.equal(out_full, out_kept)
    assert (out_kept - ref).abs().max() < (out_full - ref).abs().max()
    with pytest.raises(ValueError, match=r"\['backbone.stem.cnv1'\] match no layer.*"
                                         r"backbone.stages.0.blocks.0.mixer.proj_in"):
        convert_for_cpu(published_s, 'int8', calibration=calib, keep_float=['backbone.stem.cnv1'])
    with pytest.raises(ValueError, match='match no layer'):   # the dynamic form's convs are float
        convert_for_cpu(published_s, 'int8', keep_float=['backbone.stem.conv1'])
    with pytest.raises(ValueError, match="keep_float applies to dtype='int8' only"):
        convert_for_cpu(published_s, 'bf16', keep_float=['backbone.stem.conv1'])


def test_keep_float_sensitivity_finds_the_layer_that_costs_accuracy():
    """One outlier pixel in the calibration images gives the stem's first conv a huge input
    range, so its uint8 steps are coarse: keeping that one layer float buys back the most,
    and the report says so first.  Groups cover every int8 layer once."""
    from enformer_core.deploy import int8_layer_names, keep_float_sensitivity, layer_groups
    assert layer_groups(['stages.2.blocks.5.ffn.fc1', 'stem.conv1', 'stages.0.blocks.1.ffn.fc1',
                         'stages.1.downsample.conv']) == \
        ['stages.*.blocks.*.ffn.fc1', 'stem.conv1', 'stages.*.downsample.conv']
    torch.manual_seed(0)
    model = create_model('enformer_s').eval()
    calib = [torch.randn(2, 3, 64, 64)]
    calib[0][0, :, 3, 3] = 80.0
    rows = keep_float_sensitivity(model, torch.randn(4, 3, 64, 64), calib)
    assert rows[0]['pattern'] is None and rows[1]['pattern'] == 'backbone.stem.conv1'
    assert rows[1]['mean_abs'] < 0.5 * rows[0]['mean_abs']
    assert [r['mean_abs'] for r in rows[1:]] == sorted(r['mean_abs'] for r in rows[1:])
    names = int8_layer_names(convert_for_cpu(model, 'int8', calibration=calib))
    assert sum(r['layers'] for r in rows) == len(names) == 95
    assert {r['pattern'] for r in rows[1:]} == set(layer_groups(names))


def test_mlp_with_one_int8_and_one_float_weight():
    """A half-quantised MLP (one layer kept float) runs each layer on its own kernel, in
    row blocks or not."""
    torch.manual_seed(0)
    x = torch.randn(3, 40, 16)
    w1, b1, w2, b2 = torch.randn(32, 16) * 0.2, torch.randn(32), torch.randn(16, 32) * 0.2, \
        torch.randn(16)
    q1, q2 = Int8Weight(w1), Int8Weight(w2)
    with torch.inference_mode():
        for a, b in ((q1, w2), (w1, q2)):
            expected = fused.linear(fused.linear(x, a, b1, act='silu'), b, b2)
            for rows in (8, None):
                assert torch.allclose(fused.mlp(x, a, b1, b, b2, rows=rows), expected,
                                      atol=1e-5)


def test_calibration_arguments_are_checked(published_s):
    with pytest.raises(ValueError, match='int8'):
        convert_for_cpu(published_s, 'bf16', calibration=[torch.randn(1, 3, 64, 64)])
    with pytest.raises(ValueError, match='no images'):
        convert_for_cpu(published_s, 'int8', calibration=[])


class _TaskModel(torch.nn.Module):
    """A task model's shape: it preprocesses (here: resizes and normalises) before its
    backbone and has a head of its own, which no conversion may touch."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(320, 3)

    def forward(self, images):
        x = F.interpolate(images, size=(64, 64), mode='bilinear', align_corners=False)
        x = (x - 0.5) / 0.25
        return self.head(self.backbone(x)[-1])  # the pooled last stage


def test_recorded_inputs_keep_the_backbone_input_form():
    """The backbone's own inputs are recorded (resized and normalised), copied, up to a
    limit (whole batches), and the hook is gone after the block."""
    from enformer_core.deploy import recorded_inputs
    from enformer_core.models.enformer import EnFormer
    model = _TaskModel(EnFormer(arch='s')).eval()
    images = [torch.rand(2, 3, 80, 96) for _ in range(3)]
    with torch.no_grad(), recorded_inputs(model.backbone, limit=3) as kept:
        for x in images:
            model(x)
    assert [b.shape for b in kept] == [(2, 3, 64, 64)] * 2    # 2 + 2 images pass the limit
    expected = (F.interpolate(images[1], size=(64, 64), mode='bilinear') - 0.5) / 0.25
    assert torch.allclose(kept[1], expected)
    with torch.no_grad():
        model(images[0])
    assert len(kept) == 2                                    # the hook was removed


def test_convert_backbone_for_cpu_in_a_task_model():
    """The backbone of a whole model becomes its CPU form in place; int8-static calibrates on
    what the backbone receives while the whole model runs; the head stays float."""
    from enformer_core.deploy import convert_backbone_for_cpu
    from enformer_core.models.enformer import EnFormer
    torch.manual_seed(0)
    model = _TaskModel(_lively(EnFormer(arch='s'))).eval()
    images = torch.rand(4, 3, 80, 96)
    with torch.no_grad():
        ref = model(images)
    head = model.head
    text = convert_backbone_for_cpu(model, 'int8-static', lambda: model(images[:2]))
    assert text.endswith('calibrated on 2 images (64x64)'), text
    assert isinstance(model.backbone.module.stem.conv1, Int8Conv2d)
    assert model.head is head and type(head) is torch.nn.Linear
    with torch.no_grad():
        out = model(images)
    assert 0 < (out - ref).abs().max() < 5e-2 * ref.abs().max()
    with pytest.raises(ValueError, match='needs calibration'):
        convert_backbone_for_cpu(_TaskModel(EnFormer(arch='s')), 'int8-static')
    with pytest.raises(ValueError, match='never called the backbone'):
        convert_backbone_for_cpu(_TaskModel(EnFormer(arch='s')), 'int8-static', lambda: None)
    with pytest.raises(ValueError, match='form must be one of'):
        convert_backbone_for_cpu(model, 'int4')
    with pytest.raises(ValueError, match='no backbone'):
        convert_backbone_for_cpu(torch.nn.Linear(2, 2), 'fp32')
    assert convert_backbone_for_cpu(_TaskModel(EnFormer(arch='s')), 'bf16') == \
        'backbone in its bf16 CPU form'
    other = _TaskModel(EnFormer(arch='s')).eval()
    text = convert_backbone_for_cpu(other, 'int8-static', lambda: other(images[:1]),
                                    keep_float=['stem.conv1'])
    assert text.endswith('(64x64); kept float: stem.conv1'), text
    assert type(other.backbone.module.stem.conv1) is torch.nn.Conv2d


def test_calibration_leaves_a_training_mode_model_as_it_was():
    """A model built from a config is in training mode: calibrating in that mode would move
    every BatchNorm's statistics (the neck's and head's too, which stay in the model) and
    change its later outputs.  The run happens in eval mode; the modes come back."""
    from enformer_core.deploy import convert_backbone_for_cpu
    from enformer_core.models.enformer import EnFormer
    torch.manual_seed(0)
    model = _TaskModel(EnFormer(arch='s'))
    model.head = torch.nn.Sequential(torch.nn.BatchNorm1d(320), torch.nn.Linear(320, 3))
    model.train()
    model.head[0].eval()                                 # e.g. norm_eval: stays as it was
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    modes = []

    def run():
        modes.append(model.training)
        model(torch.rand(4, 3, 64, 64))
    convert_backbone_for_cpu(model, 'int8-static', run)
    assert modes == [False]
    assert model.training and model.head.training and not model.head[0].training
    after = model.head.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _int8_case(n=37, k=40, m=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, n, k, generator=g) * 2 + 0.3
    w = torch.randn(m, k, generator=g) / k ** 0.5
    return x, w, torch.randn(m, generator=g), torch.randn(3, n, m, generator=g)


@pytest.mark.parametrize('act', [None, 'silu'])
@pytest.mark.parametrize('with_residual', [False, True])
@pytest.mark.parametrize('out_features', [24, 72])   # the residual added apart / fused
def test_int8_linear_fast_path_equals_its_reference(act, with_residual, out_features):
    """oneDNN's int8 kernel computes the documented quantised maths (int32 accumulation, so
    only float rounding differs), and it stays close to the float Linear."""
    x, w, b, r = _int8_case(m=out_features)
    r = r if with_residual else None
    r_before = None if r is None else r.clone()
    qw = Int8Weight(w)
    fast = int8_linear(x, qw, b, act, r)
    ref = int8_linear_reference(x, qw, b, act, r)
    assert fast.shape == (3, 37, out_features) and fast.dtype == torch.float32
    assert (fast - ref).abs().max() <= 1e-5 * ref.abs().max()
    exact = F.linear(x, w, b)
    exact = F.silu(exact) if act == 'silu' else exact
    exact = exact if r is None else exact + r
    assert (fast - exact).abs().max() < 3e-2 * exact.abs().max()
    if r is not None:
        assert torch.equal(r, r_before)            # the residual is not written to


@pytest.mark.parametrize('with_residual', [False, True])
def test_static_int8_mlp_chain_equals_its_reference(with_residual):
    """With static input quantisation, fc1 writes fc2's uint8 input directly; that equals
    quantising the float SiLU output (up to a rounding step on ties), and the chain stays
    close to the float FFN."""
    x, w, b, _ = _int8_case(k=40, m=96)
    w2 = torch.randn(40, 96) / 96 ** 0.5
    b2 = torch.randn(40)
    r = torch.randn(3, 37, 40) if with_residual else None
    q1, q2 = Int8Weight(w), Int8Weight(w2)
    with quantized.calibrate([q1, q2]):
        dynamic = quantized.int8_mlp(x, q1, b, q2, b2, r)   # records the ranges
    assert q1.input_qparams is not None and q2.input_qparams is not None
    assert q1.act_qparams is not None and q2.act_qparams is None   # fc1's pre-activation
    fast = quantized.int8_mlp(x, q1, b, q2, b2, r)
    ref = quantized.int8_mlp_reference(x, q1, b, q2, b2, r)
    scale = ref.abs().max()
    step = q2.input_qparams[0] * q2.dequantize().abs().sum(1).max()   # one uint8 step, all in
    assert (fast - ref).abs().max() <= step + 1e-5 * scale
    assert (fast - ref).abs().mean() < 1e-3 * scale
    exact = F.linear(F.silu(F.linear(x, w, b)), w2, b2) + (0 if r is None else r)
    assert (fast - exact).abs().max() < 3e-2 * exact.abs().max()
    assert (dynamic - exact).abs().max() < 3e-2 * exact.abs().max()


def test_int8_quantisation_formulas():
    """Weights: symmetric per channel, error <= half a step; activations: zero maps to an
    integer exactly (zero padding stays exact)."""
    _, w, _, _ = _int8_case()
    qw = Int8Weight(w)
    assert qw.qweight.dtype == torch.int8 and qw.qweight.abs().max() <= 127
    assert (qw.qweight.abs().amax(1) == 127).all()
    assert ((qw.dequantize() - w).abs() <= qw.scale[:, None] / 2 + 1e-7).all()
    x = torch.tensor([-1.0, 0.0, 3.0])
    scale, zp = activation_qparams(x)
    assert scale == pytest.approx(4 / 255) and zp == round(1 / scale)
    assert activation_qparams(torch.tensor([2.0, 5.0])) == (pytest.approx(5 / 255), 0)
    assert activation_qparams(torch.zeros(4)) == (1.0, 0)
    assert math.isnan(activation_qparams(torch.tensor([1.0, float('inf')]))[0])  # falls back


def test_fast_uint8_quantiser_equals_the_formula():
    x = torch.randn(300, 40) * 3
    scale, zp = activation_qparams(x)
    fast = quantized.quantize_u8(x, scale, zp)
    ref = quantized.quantize_u8_reference(x, scale, zp)
    assert fast.dtype == torch.uint8 and fast.shape == x.shape
    assert (fast.int() - ref.int()).abs().max() <= 1          # ties may round either way
    assert (fast != ref).float().mean() < 1e-3


def test_int8_linear_edge_cases():
    x, w, b, _ = _int8_case()
    layer = Int8Linear.from_linear(torch.nn.Linear(40, 24))
    assert layer(torch.zeros(0, 5, 40)).shape == (0, 5, 24)          # empty batch
    bad = x.clone()
    bad[0, 0, 0] = float('nan')
    out = int8_linear(bad, Int8Weight(w), b)       # NaN reaches its own row only, as in fp32
    assert torch.isnan(out[0, 0]).all() and torch.isfinite(out[0, 1:]).all()
    with pytest.raises(ValueError, match='40'):
        layer(torch.randn(2, 41))
    with pytest.raises(ValueError, match="'silu'"):
        int8_linear(x, Int8Weight(w), b, act='gelu')
    with pytest.raises(ValueError, match='shape'):
        Int8Weight(torch.randn(3, 4, 5))


@pytest.mark.parametrize('cin,cout,k,stride,dilation,groups', [
    (5, 20, 3, 2, 1, 1),        # EnFormer's stem
    (40, 40, 3, 1, 1, 40),      # the folded FFN conv (depthwise)
    (24, 24, 5, 1, 2, 24),      # dilated depthwise
    (16, 32, 1, 1, 1, 1),       # pointwise (Context Clusters / FEC)
])
def test_int8_conv_fast_path_equals_its_reference(cin, cout, k, stride, dilation, groups):
    """oneDNN's int8 conv computes the documented quantised maths (channels-last float out,
    zero padding exact) for any input memory format, and stays close to the float conv."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, groups)
    x = torch.randn(2, cin, 13, 11, generator=g) * 1.5 + 0.2
    layer = Int8Conv2d.from_conv(conv)
    assert isinstance(layer.weight, Int8ConvWeight) and 'dynamic' in repr(layer)
    with torch.inference_mode():
        exact = conv(x)
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            fast = layer(inp)
            ref = int8_conv2d_reference(inp, layer.weight, layer.bias)
            assert fast.shape == exact.shape and fast.dtype == torch.float32
            assert fast.is_contiguous(memory_format=torch.channels_last)
            assert (fast - ref).abs().max() <= 1e-5 * ref.abs().max()
            assert (fast - exact).abs().max() < 3e-2 * exact.abs().max()
    w = layer.weight                   # weights: symmetric per output channel, half a step
    assert (w.qweight.flatten(1).abs().amax(1) == 127).all()
    assert ((w.dequantize() - conv.weight).abs() <= w.scale.view(-1, 1, 1, 1) / 2 + 1e-7).all()


@pytest.mark.parametrize('with_residual', [False, True])
def test_static_int8_conv_mlp_chain_equals_its_reference(with_residual):
    """EnFormer's FFN in static int8: uint8 from the conv's input to fc2's.  Each uint8
    hand-over equals quantising the float output it stands for (up to a rounding step on
    ties), and the chain stays close to the float FFN."""
    g = torch.Generator().manual_seed(0)
    c = 24
    conv = torch.nn.Conv2d(c, c, 3, padding=1, groups=c)
    fc1, fc2 = torch.nn.Linear(c, 4 * c), torch.nn.Linear(4 * c, c)
    x = torch.randn(2, 9, 10, c, generator=g)                   # channels-last (B, H, W, C)
    r = torch.randn(2, 9, 10, c, generator=g) if with_residual else None
    qc, q1, q2 = Int8ConvWeight(conv.weight, 1, 1, 1, c), Int8Weight(fc1.weight), \
        Int8Weight(fc2.weight)
    args = (qc, conv.bias, q1, fc1.bias, q2, fc2.bias, r)
    with quantized.calibrate([qc, q1, q2]):
        dynamic = int8_conv_mlp(x, *args)          # the un-chained path, recording ranges
    assert all(w.input_qparams is not None for w in (qc, q1, q2))
    fast = int8_conv_mlp(x, *args)
    ref = int8_conv_mlp_reference(x, *args)
    assert fast.shape == (2, 9, 10, c)
    with torch.inference_mode():
        exact = fc2(F.silu(fc1(conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))))
        exact = exact if r is None else exact + r
    scale = exact.abs().max()
    step = (q1.input_qparams[0] * q1.dequantize().abs().sum(1).max()
            * q2.dequantize().abs().sum(1).max() + q2.input_qparams[0]
            * q2.dequantize().abs().sum(1).max())    # one uint8 step at each hand-over, all in
    assert (fast - ref).abs().max() <= step + 1e-5 * scale
    assert (fast - ref).abs().mean() < 2e-3 * scale
    assert (fast - exact).abs().max() < 4e-2 * scale
    assert (dynamic - exact).abs().max() < 4e-2 * scale


def test_int8_conv_edge_cases():
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    layer = Int8Conv2d.from_conv(conv)
    assert layer(torch.zeros(0, 8, 5, 5)).shape == (0, 8, 5, 5)           # empty batch
    x = torch.randn(2, 8, 6, 6)
    x[1, 3, 2, 2] = float('nan')                 # NaN reaches its own sample only, as in fp32
    out = layer(x)
    assert torch.isnan(out[1]).any() and torch.isfinite(out[0]).all()
    with pytest.raises(ValueError, match='8'):
        layer(torch.randn(2, 7, 6, 6))
    with pytest.raises(ValueError, match='zero padding'):
        Int8Conv2d.from_conv(torch.nn.Conv2d(8, 8, 3, padding=1, padding_mode='reflect'))
    with pytest.raises(ValueError, match='4-D'):
        Int8ConvWeight(torch.randn(8, 8))
    w1, w2 = Int8Weight(torch.randn(32, 8)), Int8Weight(torch.randn(8, 32))
    with pytest.raises(ValueError, match=r'\(B, H, W, C\)'):
        int8_conv_mlp(torch.randn(2, 5, 8), layer.weight, layer.bias, w1, None, w2, None)
    import pickle
    copy = pickle.loads(pickle.dumps(layer))     # the packed kernel weight is rebuilt
    assert torch.equal(copy(x[:1]), layer(x[:1]))


def test_agreement_over_a_loader(published_s):
    torch.manual_seed(0)
    loader = [(torch.randn(2, 3, 64, 64), torch.tensor([1, 2])) for _ in range(2)]
    same = agreement(published_s, published_s, loader)
    assert same['images'] == 4 and same['top1_agreement'] == 1.0
    assert same['max_abs_logit_diff'] == 0.0 and same['top1_fp32'] == same['top1_x']
    res = agreement(published_s, convert_for_cpu(published_s, 'bf16'), loader, max_batches=1)
    assert res['images'] == 2 and 0.0 <= res['top1_agreement'] <= 1.0
    unlabelled = agreement(published_s, published_s, [x for x, _ in loader])
    assert 'top1_fp32' not in unlabelled


def test_bad_dtype():
    with pytest.raises(ValueError, match='dtype'):
        convert_for_cpu(torch.nn.Linear(2, 2), 'fp8')


def test_autocast_training_step_uses_the_plain_ops():
    """Under autocast the memory-lean Functions and oneDNN calls stand aside (they would mix
    dtypes): a bf16-autocast training step runs and gives finite gradients."""
    model = create_model('enformer_s').train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = model(torch.randn(2, 3, 64, 64)).float().logsumexp(-1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_tune_malloc_is_accepted_by_glibc():
    import platform
    from enformer_core.deploy import tune_malloc
    ok = tune_malloc()
    if platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc':
        assert ok is True
    else:
        assert ok in (True, False)


def test_empty_batch_through_the_fused_paths():
    """A batch of 0 images: forward in every mode and a backward (oneDNN rejects empty
    reductions; the fused paths fall back to the plain ops there)."""
    model = create_model('enformer_s')
    x = torch.randn(0, 3, 64, 64)
    with torch.inference_mode():
        assert model.eval()(x).shape == (0, 1000)
    out = model.train()(x)
    out.sum().backward()
    assert out.shape == (0, 1000)


@pytest.mark.parametrize('kernel,dilation,size', [(3, 2, 7), (7, 1, 8), (3, 3, 4)])
def test_depthwise_conv_function_gradcheck_and_conv_gradients(kernel, dilation, size):
    """The input gradient as the conv with the flipped kernel: float64 gradcheck, and equal
    to nn.Conv2d's gradients in fp32 (channels-last, as in the FFN)."""
    from enformer_core.models.layers import _DepthwiseConv, depthwise_conv2d
    p = dilation * (kernel - 1) // 2
    x = _rand(2, 3, size, size + 1).contiguous(memory_format=torch.channels_last)
    w, b = _rand(3, 1, kernel, kernel), _rand(3)
    args = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda *a: _DepthwiseConv.apply(*a, p, dilation), args)
    conv = torch.nn.Conv2d(8, 8, kernel, padding=p, dilation=dilation, groups=8)
    xf = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    xf.requires_grad_()
    out = depthwise_conv2d(xf, conv)
    assert type(out.grad_fn).__name__ == '_DepthwiseConvBackward'
    g = torch.randn_like(out)
    ours = torch.autograd.grad((out * g).sum(), [xf, *conv.parameters()])
    ref = torch.autograd.grad((conv(xf) * g).sum(), [xf, *conv.parameters()])
    for a, r in zip(ours, ref):
        assert torch.allclose(a, r, rtol=1e-5, atol=1e-5)
