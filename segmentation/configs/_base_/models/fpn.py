# Semantic FPN as published (mmseg's fpn_r50: FPN 256 channels, 4 outputs; FPNHead 128
# channels, dropout 0.1) for the 150 ADE20K classes. A model file adds the backbone and the
# FPN's input widths.
_base_ = ['mmseg::_base_/models/fpn_r50.py']
# pads every training crop to 512x512 (image 0, label 255 = ignored)
data_preprocessor = dict(size=(512, 512))
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    neck=dict(out_channels=256, num_outs=4),
    decode_head=dict(num_classes=150))
