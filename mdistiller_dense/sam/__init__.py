"""Segment Anything as a dense task: SAM teachers, MobileSAM's TinyViT student, SA-1B data
(mdistiller_dense/data/sa1b.py), the two-stage pipeline of MobileSAM and FreeKD's supplement A.3
(stage 1 encoder distillation on stored teacher embeddings, stage 2 mask-decoder fine-tuning) and its
evaluation. Modules: models, prompts, embeddings, evaluation, distillers, build, stages, trainer.
"""
