"""model_repo"""
