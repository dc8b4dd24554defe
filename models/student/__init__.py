"""A distilled student of CLLM4Rec: a SASRec-sized user encoder in the teacher's score space (issue 28)."""
