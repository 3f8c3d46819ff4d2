"""The benchmark harness (`refloop bench`): the product against a bare-Temporal baseline,
on the same dev server, in the same run, with the same measurement code."""
