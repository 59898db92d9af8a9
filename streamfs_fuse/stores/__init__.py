"""Stores behind the core's seam, for trees and streams that span hosts.

The default, one host's memory, is part of the core (:mod:`..core.memory`).
"""
