"""models/data"""
