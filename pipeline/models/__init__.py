"""The network: timm backbone, pretrained weights, head, the `Classifier` that joins them, and
timm's parameter groups (`layer_groups`).

Config groups: conf/backbone (`models.backbone.BackboneConfig`), conf/head (`models.head.HeadConfig`).
Imports only `errors`, `repro`, `signals`.
"""
