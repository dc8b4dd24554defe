from models.data.dataset import IdMap, InteractionData

__all__ = ["IdMap", "InteractionData"]
