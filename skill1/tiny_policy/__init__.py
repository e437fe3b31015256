"""The tiny local policy a laptop run trains: built where `model.path` names no model (`provision`: tokenizer,
random init, warm start), warm-started on searcher demonstrations (`warm_start`), and checked for format
competence (`competence`). It sits above `skill1.models`, which only builds and loads models and tokenizers."""
