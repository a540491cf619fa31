//! Llama-family models in burn, whole or by block range.
