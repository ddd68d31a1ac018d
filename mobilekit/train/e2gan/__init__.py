"""E²GAN: efficient training of efficient image-to-image GANs (arXiv 2401.06127).

Modules: ``models`` (generator, discriminator), ``concepts`` (built-in offline concept set,
concept embeddings, text encoders), ``pairs`` (on-disk paired data), ``distill_data``
(InstructPix2Pix pairs), ``lora`` (crucial-layer LoRA adapters), ``rank_search``,
``subset`` (k-means data subsets), ``train`` (base training and adaptation), ``plots``.
"""
