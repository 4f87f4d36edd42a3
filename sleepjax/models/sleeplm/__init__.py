"""SleepLM (ReCoCa): a sleep-language model (signal encoder, text tower, caption and reconstruction decoders)."""
