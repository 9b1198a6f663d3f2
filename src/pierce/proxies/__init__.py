"""Proxy kinds, one module each: its config, its wire spec, its server side and its client side.

`registry` is the table of kinds both sessions dispatch through; `base` holds the seams a kind sees;
`bridge` the one path from a visitor to a work connection; `secret` what the secret kinds share.
"""
