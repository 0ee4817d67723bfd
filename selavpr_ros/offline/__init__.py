"""Offline work on recorded data: maps from bags and replays."""
