"""server/federation"""
