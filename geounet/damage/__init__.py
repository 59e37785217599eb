"""damage"""
