"""refloop: every referral ends in an explicit, traceable closure."""

__version__ = "0.1.0"
