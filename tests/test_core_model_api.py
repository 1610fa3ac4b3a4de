"""The timm-style API of create_model's classifiers (forward_features / forward_head,
features_only + feature_info, reset_classifier, gradient checkpointing, no_weight_decay,
pretrained_cfg, list_models), on EnFormer-S at small sizes."""
import pytest
import torch

from enformer_core import PRETRAINED_CFGS, create_model, list_models


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return create_model('enformer_s').eval()


def test_forward_features_head_and_forward_agree(model):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        fmap = model.forward_features(x)
        emb = model.forward_head(fmap, pre_logits=True)
        logits = model.forward_head(fmap)
        direct = model(x)
    assert fmap.shape == (2, 320, 2, 3)                     # (B, C, H/32, W/32), unpooled
    assert emb.shape == (2, 320) and logits.shape == (2, 1000)
    torch.testing.assert_close(direct, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.get_classifier()(emb), logits, rtol=1e-5, atol=1e-5)
    assert model.num_features == 320 and model.num_classes == 1000


def test_features_only_maps_and_feature_info():
    net = create_model('enformer_s', features_only=True, out_indices=(1, 3)).eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        maps = net(x)
    info = net.feature_info
    assert [f['num_chs'] for f in info] == [80, 320]
    assert [f['reduction'] for f in info] == [8, 32]
    assert [f['module'] for f in info] == ['post_norm1', 'post_norm3']
    assert len(maps) == 2
    for m, f in zip(maps, info):
        assert m.shape == (1, f['num_chs'], 64 // f['reduction'], 128 // f['reduction'])
    full = create_model('enformer_s', features_only=True).feature_info
    assert [f['reduction'] for f in full] == [4, 8, 16, 32]
    assert [f['num_chs'] for f in full] == [40, 80, 160, 320]


def test_reset_and_get_classifier():
    net = create_model('enformer_s').eval()
    net.reset_classifier(10)
    head = net.get_classifier()
    assert isinstance(head, torch.nn.Linear) and head.out_features == 10
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert net(x).shape == (3, 10)
        net.reset_classifier(0)                    # no head: the pooled features
        assert net(x).shape == (3, 320)
    assert isinstance(net.get_classifier(), torch.nn.Identity)


def test_gradient_checkpointing_gives_identical_gradients():
    torch.manual_seed(1)
    net = create_model('enformer_s', num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.tensor([1, 7])

    def grads():
        net.zero_grad()
        torch.manual_seed(3)  # the Gumbel noise of the partitional clusterings
        torch.nn.functional.cross_entropy(net(x), target).backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    plain = grads()
    net.set_grad_checkpointing(True)
    assert net.backbone.with_cp and all(s.with_cp for s in net.backbone.stages)
    checkpointed = grads()
    net.set_grad_checkpointing(False)
    assert plain.keys() == checkpointed.keys() and len(plain) > 100
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7,
                                   msg=name)


def test_no_weight_decay_names_only_one_dimensional_parameters(model):
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names and names <= params.keys()
    assert all(params[n].ndim == 1 for n in names)
    assert {n for n, p in params.items() if p.ndim <= 1} == names
    assert 'head.fc.bias' in names and 'head.fc.weight' not in names


def test_pretrained_cfg_fields(model):
    cfg = model.pretrained_cfg
    assert cfg is model.default_cfg
    assert cfg['architecture'] == 'enformer_s'
    assert cfg['url'] == PRETRAINED_CFGS['enformer_s'].url and cfg['url'].endswith(
        'enformer_small.pth.tar')
    assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 0.9
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
    assert cfg['num_classes'] == 1000 and cfg['metric']['top1'] == 78.9
    assert cfg['interpolation'] == 'bicubic' and cfg['file_format'] == 'timm'
    assert create_model('coc_tiny').pretrained_cfg['url'] == ''     # no published weights


def test_list_models_patterns_and_pretrained_filter():
    assert list_models('enformer_*') == ['enformer_b', 'enformer_l', 'enformer_s']
    every = list_models()
    assert {'coc_tiny', 'fec_small', 'clusterformer_tiny', 'enformer_s'} <= set(every)
    with_weights = list_models(pretrained=True)
    assert with_weights == ['enformer_b', 'enformer_l', 'enformer_s']
    assert list_models('coc_*', pretrained=True) == []
    with pytest.raises(ValueError, match='no published weights'):
        create_model('coc_tiny', pretrained=True)
