"""The Jamba-style hybrid (attention + Mamba-I layers): model, PEFT methods, config, experiment."""
