"""TCF: a text item tower (pretrained LM + MLP) with a SASRec or DSSM user tower (Li et al., 2305.11700)."""
