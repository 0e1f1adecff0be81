import pytest

from captioning.config import VocabConfig
from captioning.data.vocab import SPECIALS, Vocab, build_vocab, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A Red, circle.  Left-of it!") == ["a", "red", "circle", "left", "of", "it"]


def test_frequency_threshold_and_order():
    vocab, summary = build_vocab(["a b b c", "b c"], VocabConfig(min_freq=2, max_length=5))
    assert vocab.itos == (*SPECIALS, "b", "c")  # most frequent first; 'a' (seen once) dropped
    assert summary["words_dropped"] == 1 and summary["size"] == 6


def test_encode_decode_round_trip_with_unknown_and_truncation(tmp_path):
    vocab, summary = build_vocab(["a red circle", "a blue square"], VocabConfig(max_length=3))
    ids = vocab.encode("a red triangle above")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert len(ids) == 3 + 2  # truncated to max_length words
    assert vocab.decode(ids) == "a red <unk>"
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == vocab


def test_decode_stops_at_end():
    vocab, _ = build_vocab(["a b"], VocabConfig())
    a, b = vocab.stoi["a"], vocab.stoi["b"]
    assert vocab.decode([a, vocab.end_id, b]) == "a"


def test_decode_skips_start_and_pad_and_the_special_ids_name_their_tokens():
    vocab, _ = build_vocab(["a b"], VocabConfig())
    a, b = vocab.stoi["a"], vocab.stoi["b"]
    assert vocab.decode([vocab.start_id, a, vocab.pad_id, b]) == "a b"
    ids = (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id)
    assert tuple(vocab.itos[i] for i in ids) == SPECIALS


def test_load_rejects_a_file_without_specials(tmp_path):
    path = tmp_path / "v.json"
    path.write_text('{"itos": ["a", "b"], "max_length": 3}')
    with pytest.raises(ValueError, match=str(path)):
        Vocab.load(path)


def test_char_level_spells_words_and_joins_without_spaces(tmp_path):
    cfg = VocabConfig(level="char", max_length=5)
    vocab, summary = build_vocab(["glove", "love", "Go!"], cfg)
    assert tokenize("Go!", "char") == ["g", "o"]
    assert set(vocab.itos[len(SPECIALS) :]) == set("glove")
    assert vocab.itos[len(SPECIALS)] in ("o", "l", "v", "e", "g")  # most frequent letters first
    assert summary["max_caption_words"] == 5
    ids = vocab.encode("gloves")  # truncated to 5 characters; s is unknown anyway
    assert len(ids) == 5 + 2 and vocab.decode(ids) == "glove"
    assert vocab.decode(vocab.encode("vole")) == "vole"
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == vocab


def test_word_level_file_has_no_level_key(tmp_path):
    vocab, _ = build_vocab(["a b"], VocabConfig())
    vocab.save(tmp_path / "v.json")
    assert "level" not in (tmp_path / "v.json").read_text()
    assert Vocab.load(tmp_path / "v.json").level == "word"


def test_vocab_level_is_checked(tmp_path):
    from captioning.config import ConfigError, from_dict

    with pytest.raises(
        ConfigError, match=r"vocab\.level'?: expected one of \['char', 'word'\], found 'letters'"
    ):
        from_dict(VocabConfig, {"level": "letters"}, path="params.yaml", prefix="vocab.")
