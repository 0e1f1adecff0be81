"""Caption and word scores: pycocoevalcap's, a fast BLEU/CIDEr-D, object and word accuracy."""
