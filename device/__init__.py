"""phibox device side: runs on the kiosk, never imports torch or transformers."""

__version__ = "0.1.0"
