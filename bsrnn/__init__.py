"""bsrnn: block-sparse recurrent neural networks (Narang, Undersander & Diamos 2017)."""

__version__ = "0.1.0"
