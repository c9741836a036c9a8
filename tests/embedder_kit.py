"""Tiny sentence embedders built locally for the embedder export tests (no downloads, < 1 MB each).

- ``tiny_bert``: a 2-layer BERT with a WordPiece tokenizer trained on the demo manuals, saved as a
  plain Hugging Face folder and, beside it, as a sentence-transformers folder with CLS pooling.
- ``tiny_xlmr``: a 2-layer XLM-R with a Unigram (SentencePiece-style) tokenizer trained on the
  demo manuals, saved as a sentence-transformers folder with mean pooling and, optionally, the
  e5 family's prompts ``{"query": "query: ", "passage": "passage: "}``.
- ``aligned_multilingual``: a STAND-IN for a real multilingual embedder (multilingual-e5,
  paraphrase-multilingual-MiniLM, bge-m3), as the tiny Phi-3 stands in for Phi-3's weights. Its
  cross-lingual ability comes from a bilingual lexicon, not from training: the tokenizer has
  whole-word tokens for ~35 maintenance concepts in English, Polish and Chinese, and the input
  word embeddings of translation-equivalent tokens are set equal (the classic aligned-word-
  embeddings idea). Position embeddings are zero, so with mean pooling a sentence's vector is a
  function of its bag of tokens; the transformer layers stay random. ``scrambled=True`` gives the
  Polish and Chinese words the rows of other concepts instead: the same model without the
  alignment, which must not retrieve across languages.

All weights are random (seeded): the vectors mean nothing beyond what the lexicon puts in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

MANUALS = Path(__file__).resolve().parent.parent / "demo" / "manuals"
WIDTH = 128
"""Hidden size of the aligned stand-in: random rows of other words overlap less in more dimensions."""
E5_PROMPTS = {"query": "query: ", "passage": "passage: "}

LEXICON: list[tuple[list[str], list[str], list[str]]] = [
    # (English forms, Polish forms, Chinese forms): one concept, one embedding row
    (["oil"], ["olej", "oleju"], ["油"]),
    (["pressure"], ["ciśnienie", "ciśnienia"], ["压力"]),
    (["low"], ["niskie", "niski", "niskiego"], ["低"]),
    (["level"], ["poziom", "poziomu"], ["液位"]),
    (["tank"], ["zbiornik", "zbiorniku"], ["油箱", "储罐"]),
    (["check"], ["sprawdzić", "sprawdź"], ["检查"]),
    (["belt"], ["pasek", "paska", "taśma"], ["皮带"]),
    (["conveyor"], ["przenośnik", "przenośnika"], ["输送带", "输送机"]),
    (["slips", "slip"], ["ślizga", "poślizg"], ["打滑"]),
    (["tension"], ["napięcie", "napięcia"], ["张力"]),
    (["pulley"], ["bęben", "bębna", "bębnie"], ["滑轮"]),
    (["drive"], ["napędowy", "napędowym", "napędu"], ["驱动"]),
    (["clean", "cleaning"], ["czyszczenie", "wyczyść"], ["清洁", "清洗"]),
    (["nozzle", "nozzles"], ["dysza", "dyszy", "dysze"], ["喷嘴"]),
    (["filler"], ["napełniarka", "napełniarki"], ["灌装机"]),
    (["shift"], ["zmiana", "zmianie"], ["班次"]),
    (["replace"], ["wymień", "wymienić"], ["更换"]),
    (["ring"], ["pierścień"], ["密封圈"]),
    (["label", "labels"], ["etykieta", "etykiet", "etykiety"], ["标签"]),
    (["labeller"], ["etykieciarka", "etykieciarki"], ["贴标机"]),
    (["roll"], ["rolka", "rolkę"], ["卷"]),
    (["sensor"], ["czujnik", "czujnika"], ["传感器"]),
    (["temperature"], ["temperatura"], ["温度"]),
    (["high"], ["wysoka", "wysokie"], ["高"]),
    (["cooler"], ["chłodnica", "chłodnicy"], ["冷却器"]),
    (["fan"], ["wentylator", "wentylatora"], ["风扇"]),
    (["filter"], ["filtr", "filtra"], ["过滤器"]),
    (["lockout"], ["blokada", "blokadę"], ["锁定"]),
    (["isolator"], ["wyłącznik", "wyłącznika"], ["隔离开关"]),
    (["main"], ["główny", "głównego"], ["主"]),
    (["guard"], ["osłona", "osłony"], ["防护罩"]),
    (["opening", "open"], ["otwarciem", "otworzyć"], ["打开"]),
    (["before"], ["przed"], ["之前"]),
    (["air"], ["powietrze", "powietrza"], ["空气"]),
    (["water"], ["woda", "wodę"], ["水"]),
    (["compressor"], ["sprężarka", "sprężarki"], ["压缩机"]),
    (["drain"], ["spuść", "spuścić"], ["排放"]),
    (["motor"], ["silnik", "silnika"], ["电机"]),
    (["speed"], ["prędkość"], ["速度"]),
]

PASSAGES = {  # file name → English manual passage (its title is the first line)
    "press-oil.md": "# Hydraulic press HP-200\n\nIf the pressure is low, check the oil level in the tank sight glass "
                    "and top up hydraulic oil.",
    "conveyor-belt.md": "# Conveyor CV-1\n\nIf the conveyor belt slips on the drive pulley, adjust the belt tension "
                        "with the take-up screws.",
    "filler-nozzles.md": "# Filler FL-3\n\nClean the filler nozzles after every shift and replace a cracked nozzle "
                         "ring.",
    "labeller-roll.md": "# Labeller LB-5\n\nWhen the labels run out, the labeller sensor stops the line: fit a new "
                        "label roll.",
    "press-cooler.md": "# Press cooling\n\nWhen the temperature is high, clean the cooler fan and replace the "
                       "filter.",
    "lockout.md": "# Lockout\n\nApply lockout at the main isolator before opening the guard.",
    "compressor-water.md": "# Compressor C-4\n\nDrain the water from the compressor air tank every day.",
}

QUESTIONS = [  # (question, file name of the passage that answers it)
    ("niskie ciśnienie oleju, sprawdź poziom w zbiorniku", "press-oil.md"),
    ("油压力低，检查油箱液位", "press-oil.md"),
    ("pasek przenośnika ślizga się na bębnie napędowym", "conveyor-belt.md"),
    ("输送带皮带在驱动滑轮上打滑", "conveyor-belt.md"),
    ("czyszczenie dyszy napełniarki po zmianie", "filler-nozzles.md"),
    ("班次后清洗灌装机喷嘴", "filler-nozzles.md"),
    ("etykieciarka: nowa rolka etykiet, czujnik", "labeller-roll.md"),
    ("贴标机标签卷和传感器", "labeller-roll.md"),
    ("wysoka temperatura, wyczyść wentylator chłodnicy", "press-cooler.md"),
    ("温度高，清洁冷却器风扇", "press-cooler.md"),
    ("blokada wyłącznika głównego przed otwarciem osłony", "lockout.md"),
    ("打开防护罩之前锁定主隔离开关", "lockout.md"),
    ("spuść wodę ze zbiornika sprężarki", "compressor-water.md"),
    ("排放压缩机储罐的水", "compressor-water.md"),
]


def manual_text() -> str:
    """The demo manuals' plain text (Markdown and text files), the tokenizers' training text."""
    return "\n".join(p.read_text() for p in sorted(MANUALS.iterdir()) if p.suffix in (".md", ".txt"))


def _tiny_weights(model, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    model.apply(model._init_weights)
    model.eval()


def tiny_bert(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """(Hugging Face folder, sentence-transformers folder with CLS pooling) of one tiny BERT."""
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([manual_text()], trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    hf = folder / "tiny-bert"
    BertTokenizerFast(tokenizer_object=tok, model_max_length=128).save_pretrained(hf)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    model = BertModel(config, add_pooling_layer=False)
    _tiny_weights(model, seed)
    model.save_pretrained(hf)
    st = folder / "tiny-bert-st"
    transformer = models.Transformer(str(hf), max_seq_length=128)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode="cls")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(st))
    return hf, st


def _xlmr_tokenizer(tok, max_length: int):
    from tokenizers import decoders, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizerFast

    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<unk>",
                                   model_max_length=max_length)


def _xlmr(vocab_size: int, hidden: int):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    config = XLMRobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=2 * hidden, max_position_embeddings=130, type_vocab_size=1,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return XLMRobertaModel(config, add_pooling_layer=False)


def _save_st(hf: Path, out: Path, pooling: str, prompts: dict[str, str] | None) -> Path:
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(str(hf), max_seq_length=128)
    pool = models.Pooling(transformer.get_word_embedding_dimension(), pooling_mode=pooling)
    SentenceTransformer(modules=[transformer, pool], device="cpu", prompts=prompts).save(str(out))
    return out


def tiny_xlmr(folder: Path, name: str = "tiny-xlmr", prompts: dict[str, str] | None = None, seed: int = 1) -> Path:
    """A sentence-transformers folder: tiny XLM-R, Unigram tokenizer, mean pooling, the given prompts."""
    from tokenizers import Tokenizer, trainers
    from tokenizers.models import Unigram

    tok = Tokenizer(Unigram())
    tok.train_from_iterator([manual_text()], trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    hf = folder / f"{name}-hf"
    _xlmr_tokenizer(tok, 128).save_pretrained(hf)
    model = _xlmr(tok.get_vocab_size(), 32)
    _tiny_weights(model, seed)
    model.save_pretrained(hf)
    return _save_st(hf, folder / name, "mean", prompts)


def aligned_multilingual(folder: Path, scrambled: bool = False, seed: int = 2) -> Path:
    """The lexicon-aligned stand-in (see the module docstring): a sentence-transformers folder with
    mean pooling and no prompts, like paraphrase-multilingual-MiniLM-L12-v2."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import Unigram

    lexicon_words: dict[str, int] = {}  # word form → concept
    for concept, (en, pl, zh) in enumerate(LEXICON):
        for word in en + pl + zh:
            lexicon_words[word] = concept
    text = (manual_text() + "\n" + "\n".join(PASSAGES.values()) + "\n" + "\n".join(q for q, _ in QUESTIONS)).lower()
    other_words = sorted({w for w in re.findall(r"[^\W\d_]+", text) if w not in lexicon_words and not _cjk(w[0])})
    chars = sorted({c for c in text if not c.isspace()} | set("".join(lexicon_words)))
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    for word in lexicon_words:  # whole words win over pieces; CJK words also occur mid-sentence (no spaces)
        pieces += [("▁" + word, -1.0)] + ([(word, -1.0)] if _cjk(word[0]) else [])
    pieces += [("▁" + w, -2.0) for w in other_words] + [(c, -10.0) for c in chars]
    seen: set[str] = set()
    pieces = [p for p in pieces if not (p[0] in seen or seen.add(p[0]))]
    tok = Tokenizer(Unigram(pieces, unk_id=3, byte_fallback=False))
    name = "aligned-multilingual" + ("-scrambled" if scrambled else "")
    hf = folder / f"{name}-hf"
    _xlmr_tokenizer(tok, 128).save_pretrained(hf)

    model = _xlmr(len(pieces), WIDTH)
    _tiny_weights(model, seed)
    generator = torch.Generator().manual_seed(seed)
    concept_rows = torch.randn(len(LEXICON), WIDTH, generator=generator)
    shuffled = list(range(len(LEXICON)))
    if scrambled:  # one random cycle through all concepts: no Polish or Chinese word keeps its own row
        order = torch.randperm(len(LEXICON), generator=generator).tolist()
        for i, concept in enumerate(order):
            shuffled[concept] = order[(i + 1) % len(order)]
    with torch.no_grad():
        words = model.embeddings.word_embeddings.weight
        words.copy_(torch.randn(words.shape, generator=generator))
        english = {w for en, _, _ in LEXICON for w in en}
        for piece_id, (piece, _) in enumerate(pieces):
            word = piece.removeprefix("▁")
            if word in lexicon_words:
                concept = lexicon_words[word]
                words[piece_id] = concept_rows[concept if word in english else shuffled[concept]]
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
    model.save_pretrained(hf)
    (hf / "phibox-stand-in.json").write_text(json.dumps({
        "note": "random tiny XLM-R whose cross-lingual ability comes from a bilingual lexicon (tests/embedder_kit.py)",
        "scrambled": scrambled}) + "\n")
    return _save_st(hf, folder / name, "mean", None)


def _cjk(char: str) -> bool:
    return "\u4e00" <= char <= "\u9fff"


def write_passages(folder: Path) -> Path:
    """The English passages as Markdown manuals, one per file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in PASSAGES.items():
        (folder / name).write_text(text + "\n")
    return folder
