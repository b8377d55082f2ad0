"""The reference harness: random-weight diffusers / transformers models saved in the layouts users download.

Test-only: the runtime never imports diffusers or transformers.
"""
