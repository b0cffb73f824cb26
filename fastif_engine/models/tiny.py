"""Small random-initialised Hugging Face classifiers of every supported family, written with
``save_pretrained`` as a user's checkpoint would be (no download): for tests, the example and the
per-family benchmark.

    write_checkpoint("roberta", "ckpt/", n_classes=2, layers=2, width=32)

Text families get a tokenizer: encoders the bundled MiniLM's WordPiece vocabulary, decoders a
byte-level BPE trained here on a few sentences, with no pad token (as GPT-2 and Llama ship).
Image families get an image processor for ``image_size`` × ``image_size`` inputs.
"""
from __future__ import annotations

from pathlib import Path

import torch

TEXT_FAMILIES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert", "deberta-v2",
                 "modernbert", "gpt2", "llama", "qwen2")
IMAGE_FAMILIES = ("vit", "resnet", "convnext")
DECODERS = ("gpt2", "llama", "qwen2")
_CORPUS = ["the film is a delight from start to finish", "a dull and tedious mess", "not bad at all",
           "one of the best of the year", "the plot makes no sense", "sharp, funny and warm"] * 20


def _config(family: str, n_classes: int, layers: int, width: int, vocab: int, image_size: int):
    import transformers as T

    heads, ffn = max(1, width // 32), 4 * width  # MiniLM-like: 32 dimensions a head, feed-forward 4 × width
    labels = {"num_labels": n_classes}
    text = dict(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                intermediate_size=ffn, **labels)
    if family == "bert":
        return T.BertConfig(**text)
    if family == "roberta":
        return T.RobertaConfig(**text, pad_token_id=0)
    if family == "xlm-roberta":
        return T.XLMRobertaConfig(**text, pad_token_id=0)
    if family == "electra":
        return T.ElectraConfig(**text, embedding_size=width // 2)
    if family == "albert":
        return T.AlbertConfig(**text, embedding_size=width // 2)
    if family == "distilbert":
        return T.DistilBertConfig(vocab_size=vocab, dim=width, n_layers=layers, n_heads=heads, hidden_dim=ffn, **labels)
    if family == "deberta-v2":
        return T.DebertaV2Config(**text, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=64,
                                 position_buckets=32, pooler_hidden_size=width)
    if family == "modernbert":
        return T.ModernBertConfig(**text, pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2,
                                  sep_token_id=3, global_attn_every_n_layers=2)
    if family == "gpt2":
        return T.GPT2Config(vocab_size=vocab, n_embd=width, n_layer=layers, n_head=heads, bos_token_id=0,
                            eos_token_id=0, pad_token_id=None, **labels)
    if family == "llama":
        return T.LlamaConfig(**text, num_key_value_heads=1, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    if family == "qwen2":
        return T.Qwen2Config(**text, num_key_value_heads=1, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    vision = dict(num_channels=3, **labels)
    if family == "vit":
        return T.ViTConfig(image_size=image_size, patch_size=image_size // 4, hidden_size=width,
                           num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn, **vision)
    if family == "resnet":
        return T.ResNetConfig(embedding_size=width // 2, hidden_sizes=[width // 2 * 2 ** i for i in range(layers)],
                              depths=[1] * layers, layer_type="basic", **vision)
    if family == "convnext":
        return T.ConvNextConfig(hidden_sizes=[width // 2 * 2 ** i for i in range(layers)], depths=[1] * layers,
                                num_stages=layers, patch_size=2, **vision)
    raise ValueError(f"no tiny config for {family!r} (have {', '.join(TEXT_FAMILIES + IMAGE_FAMILIES)})")


def _decoder_tokenizer():
    """A byte-level BPE over a small corpus, with an end-of-text token and no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   model_max_length=1024)


def write_checkpoint(family: str, out, *, n_classes: int = 2, layers: int = 2, width: int = 32,
                     image_size: int = 32, labels: list[str] | None = None, seed: int = 0) -> Path:
    """Write a random-initialised ``family`` classifier (and its tokenizer or image processor) to ``out``."""
    import transformers as T

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if family in IMAGE_FAMILIES:
        vocab = 0
        processor = (T.ViTImageProcessorPil if family == "vit" else T.ConvNextImageProcessorPil)(
            size={"height": image_size, "width": image_size} if family == "vit" else {"shortest_edge": image_size},
            do_resize=True)
        processor.save_pretrained(out)
    else:
        if family in DECODERS:
            tok = _decoder_tokenizer()
        else:
            from .text import encoder_path

            tok = T.AutoTokenizer.from_pretrained(encoder_path())
        vocab = len(tok)
        tok.save_pretrained(out)
    config = _config(family, n_classes, layers, width, vocab, image_size)
    if labels is not None:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    torch.manual_seed(seed)
    auto = T.AutoModelForImageClassification if family in IMAGE_FAMILIES else T.AutoModelForSequenceClassification
    auto.from_config(config).save_pretrained(out)
    return out
