"""Reports over finished records: comparison tables, the leaderboard, plots, the learning summary and scoring of
generations made elsewhere.
"""
