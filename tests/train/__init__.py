"""Tests of rloss.train (training, evaluation, prediction)."""
