"""rlhfv_nb: DDPO (RLHF-V) for vision-language models, driven by notebooks."""
