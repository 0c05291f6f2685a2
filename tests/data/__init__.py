"""Tests of rloss.data."""
