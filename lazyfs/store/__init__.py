"""The store: the one owner of the on-disk layout of blobs, layers and images.

Imports: providers.
"""
