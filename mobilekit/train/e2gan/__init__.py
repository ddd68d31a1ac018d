"""E²GAN: efficient training of efficient image-to-image GANs (arXiv 2401.06127).

Modules: ``models`` (generator, discriminator), ``concepts`` (built-in offline concept set,
concept embeddings, text encoders), ``pairs`` (on-disk paired data), ``distill_data``
(InstructPix2Pix pairs), ``lora`` (crucial-layer LoRA adapters), ``rank_search``,
``subset`` (k-means data subsets), ``train`` (base training and adaptation), ``plots``.
"""


def _register_adapter_layout() -> None:
    """Let ``mobilekit.lora`` read E²GAN adapter folders (``adapter.json``); the SDK core knows no E²GAN."""
    from mobilekit.lora import register_adapter_layout
    from mobilekit.train.e2gan.lora import ADAPTER_META, load_adapter

    register_adapter_layout(ADAPTER_META, load_adapter)


_register_adapter_layout()
